"""Stage preprocess: split the raw bytes by offset into train/val/test (uint8 files) plus meta.json."""

import argparse
import logging
from pathlib import Path

from chargpt.data.config import load_data_config
from chargpt.data.corpus import split_corpus
from chargpt.io import read_json, write_json
from chargpt.pipeline.harness import run_stage, sweep_temporaries

log = logging.getLogger("stages.preprocess")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--corpus", default="data/raw/corpus.bin")
    parser.add_argument("--out", default="data/processed")
    args = parser.parse_args()

    cfg = load_data_config(args.params)
    sweep_temporaries(args.out)
    source = read_json(Path(args.corpus).with_suffix(".json"), "url", "verified")
    meta = split_corpus(args.corpus, args.out, cfg.split)
    meta["source"] = {"url": source["url"], "verified": source["verified"]}
    write_json(Path(args.out) / "meta.json", meta)
    for name, split in meta["splits"].items():
        log.info("%s: %d bytes, sha256 %s", name, split["bytes"], split["sha256"])


if __name__ == "__main__":
    run_stage(main)
