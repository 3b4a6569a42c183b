"""Train the hybrid detector end to end and write a verified model bundle.

    result = train("data/creditcard-sample.csv.gz", "models/default", epochs=5, progress=False)
    result.manifest["evaluation"]["test"]["ensemble"]["auprc"]

One function per stage, in this order (the bench's timing table lists the same names):

1. `load_and_split`: read and validate the CSV (or the stored rows with their known labels,
   `training.from_db`); split 60/20/20 by time.
2. `scale`: fit the scaler on the training stretch; scale every stretch.
3. `fit_autoencoder_stage`: the autoencoder on the training stretch's normal rows, and its
   features for every stretch.
4. `fit_booster_stage` ("boosters"): XGBoost on the scaled features (+ the autoencoder's
   for the ensemble), keeping the number of rounds that scores best on validation; the
   same for the baseline without the autoencoder.
5. `choose_thresholds`: the alert threshold on validation by the user's rule.
6. `refit_stage`: each XGBoost model again on train + validation with its chosen rounds.
7. `evaluate`: every model on the test stretch (and validation), beside the
   reconstruction error alone; with `reference`, the histograms for drift.
   (`rolling_origin`, only when asked: the model choices on four forward windows.)
8. `write_bundle`: the files, the manifest, and a reload that must score exactly as the
   in-memory model did.

**Both cores.** The two XGBoost models (the ensemble and the XGBoost-alone baseline) are
independent, so each trains and refits on its own thread (`threads` = 2: one core each,
`nthread` 1), and the baseline starts while the autoencoder trains on the main thread.
XGBoost releases the GIL while it trains, and its result does not depend on its thread
count, so the bundle is the same bit for bit as when everything ran in a row. Why not one
model after the other with `nthread=2`: on the full data that kept one core busy, not two
(torch had left OpenMP's thread count at 1, which XGBoost takes as a ceiling; see
`training.autoencoder.torch_threads`), and OpenMP's per-level barriers make a two-thread
XGBoost wait on every descheduled thread when the machine has other work, where two
independent one-thread models simply share what is free.

The threshold comes from the train-only model's validation scores and is carried over to
the refitted model (the refitted model has seen the validation rows, so its scores there
would flatter any threshold). The autoencoder and the scaler are not refitted: they stay
fitted on the training stretch only.

Every choice (rounds, threshold, which autoencoder features) is made on validation; the
test stretch is only ever scored once, at the end.

Which autoencoder outputs feed XGBoost (`DEFAULT_AE_FEATURES`) was decided on the
validation stretch of the full data (XGBoost 800 rounds, AUPRC): scaled inputs + hour
0.782; + mean reconstruction error 0.790; + latent code 0.785; + per-feature residuals
0.766; + error + residuals 0.773; + all three 0.772. With 57 validation frauds these are
all within noise; the residual vector (29 more columns) was consistently a little worse,
so the default is the single mean-error column. `--ae-features` chooses otherwise. The
rolling-origin evaluation (`training.rolling`, `--rolling-origin`) checks these choices on
four forward windows instead of one validation stretch.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
import xgboost as xgb

from core import metrics
from core.bundle import MANIFEST_NAME, write_manifest
from core.dataset import Dataset, load_csv
from core.ensemble import (
    BASE_FEATURES,
    Ensemble,
    autoencoder_features,
    base_inputs,
    feature_names,
    hour_of_day,
    model_matrix,
)
from core.features import RAW_FEATURES
from core.scaler import Scaler
from training.autoencoder import AutoencoderConfig, AutoencoderFit, fit_autoencoder, torch_threads
from training.booster import BoosterFit, fit_booster, refit_booster
from training.config import DEFAULT_AE_FEATURES, TrainConfig
from training.plots import write_curves_png
from training.reference import input_reference, score_reference
from training.rolling import rolling_origin
from training.split import Split, time_split
from training.timing import StageTimer

__all__ = [
    "DEFAULT_AE_FEATURES",
    "MODELS",
    "TrainConfig",
    "TrainResult",
    "TrainingData",
    "train",
    "train_from",
]

AE_FILE = "autoencoder.pt"
XGB_FILE = "xgboost.ubj"
PNG_FILE = "curves.png"
MODELS = ("ensemble", "xgboost_alone", "autoencoder_alone")
BOOSTED = ("ensemble", "xgboost_alone")
STRETCHES = ("train", "validation", "test")


@dataclass
class TrainResult:
    """What `train` produced: the bundle directory and its manifest, plus test scores for benchmarks."""

    bundle_dir: Path
    manifest: dict[str, Any]
    test_labels: np.ndarray = field(repr=False)
    test_scores: dict[str, np.ndarray] = field(repr=False)
    seconds: float = 0.0
    #: `StageTimer.summary()` at the very end, with `write_bundle` (the manifest's stops before it).
    timing: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class TrainingData:
    """The `load_and_split` stage's output: the rows, their time-ordered split, and where they came from.

    `source` goes into the manifest's `training.data` as it is (`{"file": name}` for a CSV;
    the database, the cutoff and the labels' provenance for `training.from_db`).
    """

    data: Dataset
    split: Split
    source: dict[str, Any]


@dataclass(frozen=True)
class Scaled:
    """The `scale` stage's output: the fitted scaler and, per stretch, what the models read."""

    scaler: Scaler
    scaled: dict[str, np.ndarray]
    hours: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelInputs:
    """One XGBoost model's input matrix per stretch and its feature names."""

    name: str
    matrices: dict[str, np.ndarray]
    feature_names: list[str]


@dataclass(frozen=True)
class Boosted:
    """One XGBoost model after its lane: the train-only fit (and its validation scores), the final model (and its test scores)."""

    fit: BoosterFit
    final: xgb.Booster
    validation_scores: np.ndarray = field(repr=False)
    test_scores: np.ndarray = field(repr=False)


# --------------------------------------------------------------------------- stages


def load_and_split(data_path: str | Path) -> tuple[Dataset, Split]:
    """Read and validate the CSV, split it 60/20/20 by time; every stretch needs a fraud."""
    data = load_csv(data_path)
    return data, split_checked(data)


def split_checked(data: Dataset, *, min_frauds: int = 1) -> Split:
    """Split 60/20/20 by time; refuse when a stretch has fewer than `min_frauds` frauds."""
    split = time_split(data)
    for name in STRETCHES:
        frauds = getattr(split, name).fraud_count
        if frauds < min_frauds:
            found = "no frauds" if frauds == 0 else f"only {frauds} frauds (at least {min_frauds} needed)"
            raise ValueError(f"the {name} stretch has {found}: too little data to train and evaluate")
    return split


def scale(split: Split) -> Scaled:
    """Fit the scaler on the training stretch only; scale every stretch with it."""
    parts = {name: getattr(split, name) for name in STRETCHES}
    scaler = Scaler("standard").fit(base_inputs(split.train.raw))
    return Scaled(
        scaler=scaler,
        scaled={name: scaler.transform(base_inputs(part.raw)) for name, part in parts.items()},
        hours={name: hour_of_day(part.raw) for name, part in parts.items()},
        labels={name: part.labels for name, part in parts.items()},
    )


def fit_autoencoder_stage(
    inputs: Scaled, config: TrainConfig
) -> tuple[AutoencoderFit, AutoencoderConfig, dict[str, np.ndarray]]:
    """The autoencoder on normal training rows (early stopping on normal validation rows), and its features.

    One torch thread for both (see `training.autoencoder`); the thread count torch had
    before is put back afterwards.
    """
    ae_config = AutoencoderConfig(hidden=config.hidden, epochs=config.epochs)
    labels, scaled = inputs.labels, inputs.scaled
    with torch_threads(ae_config.threads):
        ae_fit = fit_autoencoder(
            scaled["train"][labels["train"] == 0],
            scaled["validation"][labels["validation"] == 0],
            ae_config,
            seed=config.seed,
            progress=config.progress,
        )
        columns = {
            name: autoencoder_features(ae_fit.model, x, config.ae_features) for name, x in scaled.items()
        }
    return ae_fit, ae_config, columns


def baseline_inputs(inputs: Scaled) -> ModelInputs:
    """XGBoost alone: the scaled inputs and the hour of day."""
    matrices = {n: np.column_stack([inputs.scaled[n], inputs.hours[n]]).astype(np.float32) for n in STRETCHES}
    return ModelInputs("xgboost_alone", matrices, [*BASE_FEATURES, "hour"])


def ensemble_inputs(
    inputs: Scaled, ae_columns: dict[str, np.ndarray], config: TrainConfig, latent_dim: int
) -> ModelInputs:
    """The ensemble: the baseline's inputs plus the chosen autoencoder features."""
    matrices = {
        n: model_matrix(inputs.scaled[n], inputs.hours[n], ae_columns[n], config.ae_features)
        for n in STRETCHES
    }
    return ModelInputs("ensemble", matrices, feature_names(config.ae_features, latent_dim))


def fit_booster_stage(
    model: ModelInputs, labels: dict[str, np.ndarray], config: TrainConfig, *, nthread: int, position: int
) -> BoosterFit:
    """Train on the training stretch; the number of rounds is the validation stretch's choice."""
    return fit_booster(
        model.matrices["train"],
        labels["train"],
        model.matrices["validation"],
        labels["validation"],
        feature_names=model.feature_names,
        params={**config.xgb_params, "nthread": nthread},
        max_rounds=config.max_rounds,
        seed=config.seed,
        progress=config.progress,
        desc=f"xgboost ({model.name})",
        position=position,
    )


def refit_stage(
    model: ModelInputs, labels: dict[str, np.ndarray], fit: BoosterFit, config: TrainConfig, *, position: int
) -> xgb.Booster:
    """The same model trained again on train + validation with the rounds chosen on validation."""
    return refit_booster(
        np.concatenate([model.matrices["train"], model.matrices["validation"]]),
        np.concatenate([labels["train"], labels["validation"]]),
        feature_names=model.feature_names,
        params=fit.params,
        rounds=fit.rounds,
        progress=config.progress,
        desc=f"refit ({model.name})",
        position=position,
    )


def choose_thresholds(
    validation_scores: dict[str, np.ndarray], labels: np.ndarray, config: TrainConfig
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Each model's alert threshold on its validation scores by the configured rule, with what it achieves."""
    thresholds: dict[str, float] = {}
    achieved: dict[str, dict[str, Any]] = {}
    for name, scores in validation_scores.items():
        thresholds[name], achieved[name] = metrics.choose_threshold(
            labels,
            scores,
            config.threshold_rule,
            target_precision=config.target_precision,
            alert_rate=config.alert_rate,
        )
    return thresholds, achieved


def evaluate(
    labels: dict[str, np.ndarray],
    scores_by_stretch: dict[str, dict[str, np.ndarray]],
    thresholds: dict[str, float],
) -> dict[str, dict[str, dict[str, Any]]]:
    """The evaluation table of every model on each stretch given (validation, test)."""
    return {
        stretch: {
            name: metrics.evaluate(labels[stretch], scores[name], thresholds[name], alert_rate=0.001)
            for name in MODELS
        }
        for stretch, scores in scores_by_stretch.items()
    }


def write_bundle(
    out_dir: Path,
    body: dict[str, Any],
    autoencoder: torch.nn.Module,
    booster: xgb.Booster,
    *,
    test_raw: np.ndarray,
    test_labels: np.ndarray,
    test_scores: dict[str, np.ndarray],
    test_table: dict[str, dict[str, Any]],
    finish: Any = None,
) -> dict[str, Any]:
    """Write the bundle next to `out_dir`, check that it reproduces the scores, then move it into place.

    `finish(body)` runs just before the manifest is written (the caller adds its timings).
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        torch.save(autoencoder.state_dict(), staging / AE_FILE)
        booster.save_model(str(staging / XGB_FILE))
        write_curves_png(staging / PNG_FILE, test_labels, test_scores, test_table)
        if finish is not None:
            finish(body)
        manifest = write_manifest(staging, body, [AE_FILE, XGB_FILE, PNG_FILE])
        # The shipped artefact must score exactly like the model just evaluated.
        reloaded = Ensemble.load(staging, torch_threads=None).score(test_raw)
        if not np.allclose(reloaded.score, test_scores["ensemble"], rtol=1e-5, atol=1e-6):
            raise RuntimeError("the written bundle does not reproduce the trained model's scores")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


# --------------------------------------------------------------------------- the run


def train(
    data_path: str | Path, out_dir: str | Path, config: TrainConfig | None = None, **options: Any
) -> TrainResult:
    """Train on `data_path` (Kaggle CSV), write the bundle to `out_dir`, return its manifest.

    Give a `TrainConfig`, or its fields as keyword arguments (`epochs=3, progress=False`).
    """

    def load() -> TrainingData:
        data, split = load_and_split(data_path)
        return TrainingData(data, split, {"file": Path(data_path).name})

    return train_from(load, out_dir, config, **options)


def train_from(
    load: Callable[[], TrainingData], out_dir: str | Path, config: TrainConfig | None = None, **options: Any
) -> TrainResult:
    """Train on what `load` reads (timed as the `load_and_split` stage), write the bundle to `out_dir`.

    The one run behind every data source: the CSV (`train`) and the stored stream
    (`training.from_db`) go through the same stages, protocol and checks.
    """
    if config is None:
        config = TrainConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    timer = StageTimer()

    with timer.stage("load_and_split"):
        loaded = load()
    data, split = loaded.data, loaded.split
    with timer.stage("scale"):
        inputs = scale(split)
    labels = inputs.labels

    # Two lanes when there are two cores: XGBoost alone (fit, then refit) on a worker from
    # the start; the autoencoder on this thread, then the ensemble's fit and refit on a worker.
    lanes = min(config.threads, len(BOOSTED))
    nthread = max(1, config.threads // len(BOOSTED))

    def lane(model: ModelInputs, position: int) -> Boosted:
        """Fit, score validation, refit, score test: one model from start to end on one thread."""
        with timer.stage(f"boosters: {model.name}"):
            fit = fit_booster_stage(model, labels, config, nthread=nthread, position=position)
            validation = fit.booster.inplace_predict(model.matrices["validation"]).astype(np.float64)
        final = fit.booster
        if config.refit:
            with timer.stage(f"refit: {model.name}"):
                final = refit_stage(model, labels, fit, config, position=position)
        with timer.stage(f"test scores: {model.name}"):
            test = final.inplace_predict(model.matrices["test"]).astype(np.float64)
        return Boosted(fit=fit, final=final, validation_scores=validation, test_scores=test)

    baseline = baseline_inputs(inputs)
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="booster") as pool:
        futures: dict[str, Future[Boosted]] = {}
        if lanes > 1:
            futures["xgboost_alone"] = pool.submit(lane, baseline, 1)
        with timer.stage("autoencoder"):
            ae_fit, ae_config, ae_columns = fit_autoencoder_stage(inputs, config)
        ensemble = ensemble_inputs(inputs, ae_columns, config, ae_fit.model.latent_dim)
        futures["ensemble"] = pool.submit(lane, ensemble, 0)
        if lanes == 1:
            futures["xgboost_alone"] = pool.submit(lane, baseline, 0)
        # While the models train: the histograms that need only the training stretch.
        with timer.stage("reference"):
            reference = input_reference(split.train.raw, ae_columns["train"][:, 0])
        boosted = {name: futures[name].result() for name in BOOSTED}

    with timer.stage("threshold"):
        validation_scores = {name: boosted[name].validation_scores for name in BOOSTED}
        validation_scores["autoencoder_alone"] = ae_columns["validation"][:, 0]
        thresholds, achieved = choose_thresholds(validation_scores, labels["validation"], config)

    with timer.stage("evaluate"):
        test_scores = {name: boosted[name].test_scores for name in BOOSTED}
        test_scores["autoencoder_alone"] = ae_columns["test"][:, 0]
        evaluation = evaluate(labels, {"validation": validation_scores, "test": test_scores}, thresholds)
        reference |= score_reference(
            validation_scores["ensemble"],
            thresholds["ensemble"],
            (
                "the ensemble as fitted on the training stretch (the shipped model was then refitted "
                "on train + validation, so its own validation scores would be in-sample)"
                if config.refit
                else "the shipped ensemble (fitted on the training stretch only)"
            ),
        )

    body = _manifest_body(
        loaded.source, data, split, inputs, config, ae_fit, ae_config, ensemble, boosted, thresholds, achieved
    )
    body["evaluation"] = {
        **evaluation,
        "baselines": {name: {"threshold": thresholds[name]} for name in MODELS[1:]},
        "curves": _curves(labels["test"], test_scores),
        "feature_importance": {
            "type": "share of total gain",
            "values": _importance(boosted["ensemble"].final, ensemble.feature_names),
        },
    }
    body["reference"] = reference

    def stamp_timing(manifest_body: dict[str, Any]) -> None:
        summary = timer.summary()
        manifest_body["training"]["seconds"] = round(summary["wall_seconds"], 2)
        manifest_body["training"]["timing"] = summary

    if config.rolling_origin:
        with timer.stage("rolling_origin"):
            body["evaluation"]["rolling_origin"] = rolling_origin(data, config)

    with timer.stage("write_bundle"):
        manifest = write_bundle(
            out_dir,
            body,
            ae_fit.model,
            boosted["ensemble"].final,
            test_raw=split.test.raw,
            test_labels=labels["test"],
            test_scores=test_scores,
            test_table=evaluation["test"],
            finish=stamp_timing,
        )
    return TrainResult(
        bundle_dir=out_dir,
        manifest=manifest,
        test_labels=labels["test"],
        test_scores=test_scores,
        seconds=timer.elapsed(),
        timing=timer.summary(),
    )


# --------------------------------------------------------------------------- helpers


def _library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "xgboost": xgb.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _prepare_out_dir(out_dir: Path) -> None:
    """Refuse to overwrite a directory that holds something other than a bundle."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"output path {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
            raise ValueError(
                f"output directory {out_dir} is not empty and holds no model bundle; not replacing it"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _curves(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        name: {
            "pr": metrics.downsample_curve(metrics.pr_curve(labels, s)),
            "roc": metrics.downsample_curve(metrics.roc_curve(labels, s)),
        }
        for name, s in scores.items()
    }


def _importance(booster: xgb.Booster, names: list[str]) -> dict[str, float]:
    gain = booster.get_score(importance_type="total_gain")
    total = sum(gain.values()) or 1.0
    return {name: round(gain.get(name, 0.0) / total, 6) for name in names}


def _manifest_body(
    source: dict[str, Any],
    data: Dataset,
    split: Split,
    inputs: Scaled,
    config: TrainConfig,
    ae_fit: AutoencoderFit,
    ae_config: AutoencoderConfig,
    ensemble: ModelInputs,
    boosted: dict[str, Boosted],
    thresholds: dict[str, float],
    achieved: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The manifest's `model` and `training` sections (evaluation and reference are added by the caller)."""
    splits = split.describe()
    in_sample_until = splits["validation"]["time_max"] if config.refit else splits["train"]["time_max"]
    fits = {name: boosted[name].fit for name in BOOSTED}
    return {
        "model": {
            "raw_features": list(RAW_FEATURES),
            "base_features": list(BASE_FEATURES),
            "feature_names": ensemble.feature_names,
            "scaler": inputs.scaler.to_dict(),
            "autoencoder": {"file": AE_FILE, "input_dim": len(BASE_FEATURES), "hidden": list(config.hidden)},
            "ae_features": list(config.ae_features),
            "xgboost": {
                "file": XGB_FILE,
                "rounds": fits["ensemble"].rounds,
                "refit_on_validation": config.refit,
            },
            "threshold": thresholds["ensemble"],
            "threshold_rule": config.threshold_rule_params(),
        },
        "training": {
            "data": {
                **source,
                "rows": len(data),
                "frauds": data.fraud_count,
                "time_min": float(data.time.min()),
                "time_max": float(data.time.max()),
                "split": "time-ordered 60/20/20 by row count",
                "splits": splits,
                # Rows whose data time lies in this range have been seen by the shipped model
                # (or chose its rounds and threshold): live metrics leave them out.
                "in_sample": {
                    "time_from": splits["train"]["time_min"],
                    "time_to": in_sample_until,
                    "stretches": ["train", "validation"] if config.refit else ["train"],
                },
            },
            "seed": config.seed,
            "threads": config.threads,
            "autoencoder": {
                "epochs_max": config.epochs,
                "epochs_run": len(ae_fit.history),
                "best_epoch": ae_fit.best_epoch,
                "best_validation_loss": ae_fit.best_validation_loss,
                "batch_size": ae_config.batch_size,
                "learning_rate": ae_config.learning_rate,
                "trained_on": "normal rows of the training stretch",
            },
            "xgboost": {
                name: {
                    "rounds": fits[name].rounds,
                    "validation_auprc": fits[name].validation_auprc,
                    "validation_auprc_by_rounds": {str(r): v for r, v in fits[name].checkpoints.items()},
                    "params": fits[name].params,
                }
                for name in fits
            },
            "threshold_on_validation": achieved,
            "libraries": _library_versions(),
        },
    }
