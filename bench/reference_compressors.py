"""What classical compressors (Python's own gzip, bzip2 and xz) pay per byte of the test split, given the train and
val splits before it as history, the way an adaptive compressor would see the text:

    BPC = (size(compress(train + val + test)) - size(compress(train + val))) x 8 / len(test)

    python bench/reference_compressors.py --data-dir data/processed [--json FILE]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
from pathlib import Path

COMPRESSORS = {
    "gzip -9": lambda b: gzip.compress(b, compresslevel=9, mtime=0),
    "bzip2 -9": lambda b: bz2.compress(b, compresslevel=9),
    "xz -9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data/processed"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    history = (args.data_dir / "train.bin").read_bytes() + (args.data_dir / "val.bin").read_bytes()
    test = (args.data_dir / "test.bin").read_bytes()
    figures = {}
    for name, squeeze in COMPRESSORS.items():
        figures[name] = (len(squeeze(history + test)) - len(squeeze(history))) * 8 / len(test)
        print(f"{name}: {figures[name]:.3f} BPC on the test split ({len(test):,} bytes), given train+val")
    if args.json:
        args.json.write_text(json.dumps({"test_bytes": len(test), "bpc": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
