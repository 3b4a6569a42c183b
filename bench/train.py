"""Benchmark: train on the full data, time every stage, report test AUPRC with paired bootstrap CIs.

    python -m bench.train --data /work/shared/data/creditcard.csv.gz [--no-rolling-origin]

Prints the machine line and the load average first, then the headline: training wall time,
CPU time and how many cores it kept busy, and the wall time scaled to the slower machine of
this kind (by the machine line's Python loop), where the target (< 60 s) is stated. Then one
row per training stage (the names of `training.pipeline`'s stage functions) with the thread
it ran on, when it started, its wall time and its CPU seconds: CPU seconds move far less
than wall time on a shared machine.

Why paired intervals: with ~75 frauds in the test stretch every AP interval is about ±0.09
wide, so two models' separate intervals always overlap. Resampling the same test rows for
all models and looking at the per-resample difference (ensemble − XGBoost alone) says
whether the autoencoder features help on these rows, which separate intervals cannot.

Then, unless `--no-rolling-origin`, the rolling-origin evaluation of the model choices
(`training.rolling`; it is not part of the training time), and the cost of
`Ensemble.score` for one row (the API's case) and a 4,000-row batch (the scorer's case).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import LoadSampler, measure_machine
from bench.tables import markdown_table
from core.dataset import DEFAULT_FULL_PATH, load_csv
from core.ensemble import Ensemble
from core.metrics import interval, paired_bootstrap_ap
from training.cli import format_table
from training.config import TrainConfig
from training.pipeline import MODELS, train
from training.rolling import format_report, rolling_origin
from training.split import time_split

TARGET_SECONDS = 60.0


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


def critical_path_cpu(timing: dict) -> float:
    """The run's wall time if every thread had a core to itself: its longest chain of stages, in CPU seconds.

    The main thread's stages run in a row; the ensemble's lane (fit, refit, test scores)
    starts when the autoencoder (on the main thread) is done; XGBoost alone's lane starts
    right after `scale`; the histograms of the inputs are drawn on the main thread while the
    lanes run. So the chain is `load_and_split` + `scale`, then the longer of the two lanes
    (the ensemble's counting the autoencoder), then the main thread's stages after them.
    CPU seconds hardly move with other load on the machine, so this says what the wall time
    would be on an idle one.
    """
    cpu: dict[str, float] = {}
    for stage in timing["stages"]:
        cpu[stage["stage"]] = cpu.get(stage["stage"], 0.0) + stage["cpu_seconds"]

    def lane(model: str) -> float:
        return sum(cpu.get(f"{step}: {model}", 0.0) for step in ("boosters", "refit", "test scores"))

    before = cpu.get("load_and_split", 0.0) + cpu.get("scale", 0.0)
    ensemble = cpu.get("autoencoder", 0.0) + max(lane("ensemble"), cpu.get("reference", 0.0))
    after = sum(cpu.get(name, 0.0) for name in ("threshold", "evaluate", "rolling_origin", "write_bundle"))
    return before + max(ensemble, lane("xgboost_alone")) + after


def stage_table(timing: dict) -> str:
    """One row per stage: thread, start, wall, CPU; then the run's totals."""
    rows = [
        (
            s["stage"],
            s["thread"],
            f"{s['start_seconds']:.1f}",
            f"{s['wall_seconds']:.1f}",
            f"{s['cpu_seconds']:.1f}",
        )
        for s in timing["stages"]
    ]
    rows.append(
        (
            "**whole run** (CPU of every thread)",
            "",
            "",
            f"{timing['wall_seconds']:.1f}",
            f"{timing['cpu_seconds']:.1f}",
        )
    )
    return markdown_table(["stage", "thread", "start s", "wall s", "CPU s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_FULL_PATH)
    parser.add_argument("--out", type=Path, default=None, help="bundle directory (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--max-rounds", type=int, default=TrainConfig.max_rounds, help="XGBoost rounds cap")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--no-rolling-origin", action="store_true", help="skip the rolling-origin evaluation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not args.data.is_file():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2

    machine = measure_machine()
    print(machine.describe(), flush=True)
    config = TrainConfig(
        seed=args.seed, threads=args.threads, max_rounds=args.max_rounds, progress=not args.quiet
    )
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "bundle"
        with LoadSampler() as load:
            result = train(args.data, out, config)
        manifest = result.manifest
        timing = result.timing
        wall = timing["wall_seconds"]
        critical = critical_path_cpu(timing)
        print(load.describe())
        print(
            f"data {args.data}  seed {args.seed}  threads {args.threads}  bundle version {manifest['version']}\n"
        )
        print(
            markdown_table(
                ["headline", "value"],
                [
                    ("training wall time", f"**{wall:.1f} s**"),
                    ("training CPU time (all threads)", f"{timing['cpu_seconds']:.1f} s"),
                    ("cores kept busy (CPU ÷ wall)", f"{timing['cores_busy']:.2f} of {machine.cpus}"),
                    (
                        "wall time scaled to the slower machine by the Python loop "
                        "(meaningful when the run kept ~2 cores busy)",
                        f"{machine.on_reference(wall):.1f} s (target < {TARGET_SECONDS:.0f} s)",
                    ),
                    (
                        "critical path in CPU seconds (wall time on an idle machine)",
                        f"{critical:.1f} s; on the slower machine {machine.on_reference(critical):.1f} s",
                    ),
                ],
            )
        )
        print("\nTraining stages (CPU: of the thread that ran the stage)\n")
        print(stage_table(timing))
        splits = manifest["training"]["data"]["splits"]
        print(
            "\ntime-ordered split (rows/frauds): "
            + ", ".join(f"{n} {p['rows']}/{p['frauds']}" for n, p in splits.items())
        )
        rounds = {name: fit["rounds"] for name, fit in manifest["training"]["xgboost"].items()}
        print(f"boosting rounds chosen on validation: {rounds}")
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

        data = load_csv(args.data)
        if not args.no_rolling_origin:
            print()
            with LoadSampler() as rolling_load:
                report = rolling_origin(data, config)
            print(format_report(report))
            print(rolling_load.describe())

        ensemble = Ensemble.load(result.bundle_dir)
        single, per_row = _latency(ensemble, time_split(data).test.raw)
        print(f"\nEnsemble.score: {single:.0f} µs per 1-row call, {per_row:.2f} µs/row in 4,000-row batches")
        print(machine.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
