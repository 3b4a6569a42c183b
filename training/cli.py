"""`fraudstream train` / `python -m training`: train, write the bundle, print the evaluation.

    python -m training --data data/creditcard.csv --out models/default --threshold-rule precision
    fraudstream train --data data/creditcard.csv --rolling-origin
    fraudstream train --from-db --until 150000 --shadow     # the stream's rows and labels, as a challenger

Bad flags or paths, or too few labelled rows in the database, give a one-line message and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.bundle import BundleError
from core.dataset import SAMPLE_PATH, CsvSchemaError
from core.ensemble import AE_FEATURE_KINDS
from core.metrics import THRESHOLD_RULES
from training.autoencoder import hidden_from_text
from training.config import DEFAULT_AE_FEATURES, TrainConfig
from training.pipeline import MODELS, TrainResult, train, train_from
from training.rolling import format_report

EXIT_USAGE = 2
#: Training went well but the registry change that was asked for (--shadow, or --activate
#: after --from-db) could not be made.
EXIT_NOT_REGISTERED = 1
DEFAULT_OUT = Path("models/default")
DEFAULT_OUT_FROM_DB = Path("models/from-db")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _data_time(text: str) -> float:
    value = float(text)
    if not (value >= 0.0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be data time in seconds (0 or more), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _ae_features(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [k for k in kinds if k not in AE_FEATURE_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(AE_FEATURE_KINDS)}, got {text!r}")
    return kinds


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(hidden_from_text(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudstream train",
        description="Train the autoencoder + XGBoost fraud model on a time-ordered split and write a bundle.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data", type=Path, default=None, help="Kaggle CSV (.csv or .csv.gz); the sample by default"
    )
    source.add_argument(
        "--from-db",
        action="store_true",
        help="train on the live run's transactions stored in PostgreSQL, with the labels known at --until",
    )
    parser.add_argument(
        "--until",
        type=_data_time,
        default=None,
        help="with --from-db: data time (seconds) of the last row to train on; only verdicts decided "
        "before the stream reached it count (default: every row, every verdict so far)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"bundle directory to write (default {DEFAULT_OUT}, or {DEFAULT_OUT_FROM_DB} with --from-db)",
    )
    parser.add_argument(
        "--threshold-rule", choices=THRESHOLD_RULES, default="f1", help="how to pick the threshold"
    )
    parser.add_argument(
        "--target-precision", type=_fraction, default=0.9, help="for --threshold-rule precision"
    )
    parser.add_argument("--alert-rate", type=_fraction, default=0.001, help="for --threshold-rule alert-rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=_positive_int, default=TrainConfig.epochs, help="autoencoder max")
    parser.add_argument(
        "--ae-features",
        type=_ae_features,
        default=DEFAULT_AE_FEATURES,
        help=f"autoencoder outputs fed to XGBoost, comma-separated from {','.join(AE_FEATURE_KINDS)}",
    )
    parser.add_argument(
        "--hidden", type=_hidden, default=TrainConfig.hidden, help='encoder widths, "32,16,8"'
    )
    parser.add_argument(
        "--max-rounds",
        type=_positive_int,
        default=TrainConfig.max_rounds,
        help="XGBoost rounds cap (the best checkpoint on validation is kept)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=TrainConfig.threads,
        help="cores to keep busy (the two XGBoost models train side by side)",
    )
    parser.add_argument("--no-refit", action="store_true", help="do not refit XGBoost on train + validation")
    parser.add_argument(
        "--rolling-origin",
        action="store_true",
        help="also evaluate the model choices on four forward windows (minutes on the full data); "
        "reported in the manifest",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    role = parser.add_mutually_exclusive_group()
    role.add_argument(
        "--activate",
        action="store_true",
        help="make the new bundle the active model: running scorers switch to it without a restart",
    )
    role.add_argument(
        "--shadow",
        action="store_true",
        help="make the new bundle the shadow (challenger): scored beside the champion, never alerting",
    )
    return parser


def _database_url() -> str | None:
    """The configured (or running embedded) database, or None."""
    from core.runtime.stack import NotConfigured, resolve_database_url
    from core.settings import Settings

    try:
        return resolve_database_url(Settings())
    except NotConfigured:
        return None


def register(bundle_dir: Path, *, activate: bool, shadow: bool = False) -> tuple[bool, str]:
    """Record the bundle in `model_versions` when a database is configured (or embedded and running);
    with `activate` make it the champion, with `shadow` the challenger. (registered?, what happened)."""
    import asyncio

    import asyncpg

    from core.db.registry import RegistryError, default_actor, register_model, set_shadow
    from core.db.urls import asyncpg_dsn
    from core.ensemble import Ensemble

    database_url = _database_url()
    if database_url is None:
        return False, "not registered: no database configured (the bundle is ready to serve as it is)"

    ensemble, path = Ensemble.load(bundle_dir), bundle_dir.resolve()

    async def run() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await register_model(conn, ensemble, path, activate=activate)
            if shadow:
                await set_shadow(conn, ensemble.version, default_actor(), note="trained as a challenger")
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except RegistryError as error:
        return False, f"registered, but not made the shadow: {error}"
    except (OSError, asyncpg.PostgresError) as error:
        return False, f"not registered: the database is unreachable ({error})"
    if activate:
        return True, "registered and made active"
    if shadow:
        return True, "registered and made the shadow: scorers score it beside the champion (never alerting)"
    return True, "registered (make it active with --activate, or the challenger with --shadow)"


def format_table(evaluation: dict[str, dict[str, Any]]) -> str:
    """The evaluation table: one row per model."""
    header = (
        f"{'model':<18} {'AUPRC':>6} {'ROC AUC':>7} {'R@0.1%':>6} {'prec':>5} {'recall':>6} {'F1':>5}"
        "  TP/FP/FN/TN"
    )
    lines = [header, "-" * len(header)]
    for name in MODELS:
        row = evaluation[name]
        lines.append(
            f"{name:<18} {row['auprc']:>6.3f} {row['roc_auc']:>7.3f} "
            f"{row['recall_at_0.001_alert_rate']:>6.3f} "
            f"{row['precision']:>5.3f} {row['recall']:>6.3f} {row['f1']:>5.3f}  "
            f"{row['tp']}/{row['fp']}/{row['fn']}/{row['tn']}"
        )
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run the flags ask for."""
    return TrainConfig(
        threshold_rule=args.threshold_rule,
        target_precision=args.target_precision,
        alert_rate=args.alert_rate,
        seed=args.seed,
        epochs=args.epochs,
        ae_features=args.ae_features,
        hidden=args.hidden,
        refit=not args.no_refit,
        max_rounds=args.max_rounds,
        threads=args.threads,
        progress=not args.quiet,
        rolling_origin=args.rolling_origin,
    )


def main(argv: list[str] | None = None) -> int:
    """Run training from the command line; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the message (or --help); return its code
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    if args.until is not None and not args.from_db:
        print("error: --until applies to --from-db (a CSV is read whole)", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = _train_from_db(args) if args.from_db else _train_csv(args)
    except (CsvSchemaError, BundleError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if result is None:
        return EXIT_USAGE
    manifest = result.manifest
    data = manifest["training"]["data"]
    if "source" in data:
        print(describe_source(data["source"]))
    splits = data["splits"]
    rule = manifest["model"]["threshold_rule"]
    print(f"bundle {result.bundle_dir}  version {manifest['version']}  trained in {result.seconds:.1f} s")
    print(
        "split (rows/frauds): "
        + ", ".join(f"{name} {part['rows']}/{part['frauds']}" for name, part in splits.items())
    )
    print(f"threshold {manifest['model']['threshold']:.4f} by rule {rule['rule']} (chosen on validation)")
    print("\nTest stretch (later transactions, never used for any choice):")
    print(format_table(manifest["evaluation"]["test"]))
    if "rolling_origin" in manifest["evaluation"]:
        print()
        print(format_report(manifest["evaluation"]["rolling_origin"]))
    registered, what = register(Path(result.bundle_dir), activate=args.activate, shadow=args.shadow)
    print(f"\nmodel registry: {what}")
    if not registered and (args.shadow or args.from_db):
        return EXIT_NOT_REGISTERED
    return 0


def _train_csv(args: argparse.Namespace) -> TrainResult | None:
    data = args.data or SAMPLE_PATH
    if not data.is_file():
        print(f"error: --data {data}: no such file", file=sys.stderr)
        return None
    return train(data, args.out or DEFAULT_OUT, config_from_args(args))


def _train_from_db(args: argparse.Namespace) -> TrainResult | None:
    """Train on the stored rows with the labels known at `--until` (refusing when too few)."""
    import asyncpg

    from training.from_db import load_stored

    database_url = _database_url()
    if database_url is None:
        print(
            "error: --from-db needs a database: set FRAUDSTREAM_DATABASE_URL or start the stack "
            "(`fraudstream infra` or `fraudstream up`)",
            file=sys.stderr,
        )
        return None
    config = config_from_args(args)
    try:
        stored = load_stored(database_url, until=args.until, progress=config.progress)
    except (OSError, asyncpg.PostgresError) as error:
        print(f"error: cannot read the stored rows: {error}", file=sys.stderr)
        return None
    return train_from(stored.training_data, args.out or DEFAULT_OUT_FROM_DB, config)


def describe_source(source: dict[str, Any]) -> str:
    """One line on where a --from-db model's rows and labels came from."""
    labels = source["labels"]
    until = "every stored row" if source["until"] is None else f"rows up to data time {source['until']:g} s"
    return (
        f"data: the stream's {until} in {source['database']}, labels known at {source['labels_as_of']} "
        f"(analyst {labels['analyst']}, chargeback {labels['chargeback']}, replay {labels['replay']}, "
        f"inline {labels['inline']}; {labels['unlabelled']} rows without a known label left out)"
    )
