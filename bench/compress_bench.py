"""The compressor on a file: sizes, bits per byte from the sizes against `score`'s, and both speeds, in one process.

    python bench/compress_bench.py --checkpoint models/quickstart/model.pt --file data/processed/test.bin \
        [--stride 64] [--dynamic '{"optimizer": "sgd", "lr": 0.03, "stride": 64}'] [--mixture '{"order": 12}'] \
        [--json FILE]

Prints one JSON line: input and output bytes, the header and stored bytes, the BPC of the compressed file
(output bytes x 8 / input bytes) and of `score` with the same protocol, compress and decompress bytes/s, the
thread count, and whether the round trip was byte-exact. With --mixture, the file is coded, and scored, mixed with
a context model (eval.mixture).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from chargpt.evaluation.config import DynamicEvalConfig, MixtureConfig
from chargpt.evaluation.scoring import dynamic_score, split_score
from chargpt.train.checkpoint import needed_rms
from chargpt.use.compression import compress, decompress
from chargpt.use.inference import file_sha256, load_adaptable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--stride", type=int)
    parser.add_argument("--dynamic", metavar="JSON", help="an eval.dynamic setting")
    parser.add_argument("--mixture", metavar="JSON", help="an eval.mixture setting")
    parser.add_argument("--json", type=Path, help="also append the line to this file")
    args = parser.parse_args()
    (model, stored_rms), sha = load_adaptable(args.checkpoint), file_sha256(args.checkpoint)
    data = args.file.read_bytes()
    dynamic = DynamicEvalConfig(**json.loads(args.dynamic)) if args.dynamic else None
    rms = needed_rms(args.checkpoint, stored_rms, dynamic and dynamic.optimizer)
    mixture = MixtureConfig(**json.loads(args.mixture)) if args.mixture else None
    start = time.perf_counter()
    blob, stats = compress(model, sha, data, dynamic, stride=args.stride, mixture=mixture, rms=rms)
    compress_s = time.perf_counter() - start
    start = time.perf_counter()
    restored, _ = decompress(model, sha, blob, rms=rms)
    decompress_s = time.perf_counter() - start
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    score = (
        dynamic_score(model, tensor, model.cfg.context, dynamic, mixture=mixture, rms=rms)
        if dynamic
        else split_score(model, tensor, model.cfg.context, 64, args.stride, mixture=mixture)
    )
    score = score.mixed if mixture else score
    row = {
        "file": str(args.file),
        "model_sha256": sha,
        "stride": args.stride,
        "dynamic": dynamic.model_dump() if dynamic else None,
        "mixture": mixture.model_dump() if mixture else None,
        "input_bytes": len(data),
        "output_bytes": len(blob),
        "header_bytes": stats.header_bytes,
        "bpc_compressed": len(blob) * 8 / len(data),
        "bpc_score": score.bpc,
        "bpc_payload": (len(blob) - stats.header_bytes) * 8 / len(data),
        "compress_bytes_per_s": round(len(data) / compress_s, 1),
        "decompress_bytes_per_s": round(len(data) / decompress_s, 1),
        "threads": torch.get_num_threads(),
        "round_trip": restored == data,
    }
    print(json.dumps(row))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
