"""Rebuild the shipped sample from the full Kaggle file.

Why this sample: it keeps every fraud (492) and every 10th normal transaction, in the
file's own time order, with the original header, quoting and number formatting. That
keeps enough frauds for training and evaluation to mean something while staying small
enough to ship. Note the fraud rate is ~10x the real one (about 1.7% instead of 0.17%).

    python data/make_sample.py ../shared/data/creditcard.csv.gz data/creditcard-sample.csv.gz
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

NORMAL_EVERY = 10


def make_sample(source: Path, target: Path) -> tuple[int, int]:
    """Write the sample; return (rows kept, frauds kept)."""
    opener = gzip.open if source.suffix == ".gz" else open
    kept = frauds = 0
    with opener(source, "rt", newline="") as src, gzip.open(target, "wt", newline="", compresslevel=9) as dst:
        dst.write(src.readline())
        for index, line in enumerate(src):
            is_fraud = line.rstrip("\r\n").endswith('"1"')
            if is_fraud or index % NORMAL_EVERY == 0:
                dst.write(line)
                kept += 1
                frauds += is_fraud
    return kept, frauds


if __name__ == "__main__":
    rows, frauds = make_sample(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {rows} rows, {frauds} frauds")
