"""Benchmark: train on the full data, time it, and report test AUPRC with paired bootstrap CIs.

    python -m training.bench --data /work/shared/data/creditcard.csv.gz

Why paired: with ~75 frauds in the test stretch every AP interval is about ±0.09 wide,
so two models' separate intervals always overlap. Resampling the same test rows for all
models and looking at the per-resample difference (ensemble − XGBoost alone) says whether
the autoencoder features help on these rows, which separate intervals cannot.
Also times `Ensemble.score` for one row (the API's case) and for a 4,000-row batch (the
scorer's case).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.dataset import DEFAULT_FULL_PATH, load_csv
from core.ensemble import Ensemble
from core.metrics import interval, paired_bootstrap_ap
from training.cli import format_table
from training.pipeline import MODELS, train
from training.split import time_split


def _latency(ensemble: Ensemble, raw: np.ndarray) -> tuple[float, float]:
    """(µs per single-row call, µs per row in 4,000-row batches)."""
    one = raw[:1]
    for _ in range(50):
        ensemble.score(one)
    calls = 2000
    start = time.perf_counter()
    for i in range(calls):
        ensemble.score(raw[i : i + 1])
    single = (time.perf_counter() - start) / calls * 1e6
    batch = raw[:4000]
    repeats = 20
    start = time.perf_counter()
    for _ in range(repeats):
        ensemble.score(batch)
    per_row = (time.perf_counter() - start) / repeats / batch.shape[0] * 1e6
    return single, per_row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_FULL_PATH)
    parser.add_argument("--out", type=Path, default=None, help="bundle directory (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=2000)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not args.data.is_file():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "bundle"
        started = time.perf_counter()
        result = train(args.data, out, seed=args.seed, threads=args.threads, progress=False)
        wall = time.perf_counter() - started
        manifest = result.manifest
        stages = manifest["training"]["stage_seconds"]
        print(f"data {args.data}  seed {args.seed}  bundle version {manifest['version']}")
        print(
            f"training wall time {wall:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
            + ")"
        )
        splits = manifest["training"]["data"]["splits"]
        print(
            "time-ordered split (rows/frauds): "
            + ", ".join(f"{n} {p['rows']}/{p['frauds']}" for n, p in splits.items())
        )
        print(f"threshold {manifest['model']['threshold']:.4f} (rule f1, chosen on validation)\n")
        print("Validation stretch (used for every choice):")
        print(format_table(manifest["evaluation"]["validation"]))
        print("\nTest stretch:")
        print(format_table(manifest["evaluation"]["test"]))

        draws = paired_bootstrap_ap(
            result.test_labels, result.test_scores, resamples=args.resamples, seed=args.seed
        )
        print(f"\nTest AUPRC with paired bootstrap 95% CI ({args.resamples} resamples of the test rows):")
        for name in MODELS:
            low, high = interval(draws[name])
            print(
                f"  {name:<18} {manifest['evaluation']['test'][name]['auprc']:.3f}  [{low:.3f}, {high:.3f}]"
            )
        diff = draws["ensemble"] - draws["xgboost_alone"]
        point = (
            manifest["evaluation"]["test"]["ensemble"]["auprc"]
            - manifest["evaluation"]["test"]["xgboost_alone"]["auprc"]
        )
        low, high = interval(diff)
        share = float(np.mean(diff[np.isfinite(diff)] > 0))
        print(
            f"  ensemble - xgboost_alone  {point:+.3f}  [{low:+.3f}, {high:+.3f}]  "
            f"(ensemble ahead in {share:.0%} of resamples)"
        )

        ensemble = Ensemble.load(result.bundle_dir)
        test_raw = time_split(load_csv(args.data)).test.raw
        single, per_row = _latency(ensemble, test_raw)
        print(f"\nEnsemble.score: {single:.0f} µs per 1-row call, {per_row:.2f} µs/row in 4,000-row batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
