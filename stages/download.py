"""Stage download: fetch data.url, verify its checksums, unpack it to data/raw/corpus.bin."""

import argparse
import logging
from pathlib import Path

from chargpt.data.config import load_data_config
from chargpt.data.corpus import download_corpus
from chargpt.pipeline.harness import run_stage, sweep_temporaries

log = logging.getLogger("stages.download")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/raw/corpus.bin")
    parser.add_argument("--info", default="data/raw/corpus.json")
    args = parser.parse_args()

    cfg = load_data_config(args.params)
    sweep_temporaries(Path(args.out).parent, Path(args.info).parent)
    log.info("fetching %s", cfg.url)
    download_corpus(cfg, args.out, args.info)


if __name__ == "__main__":
    run_stage(main)
