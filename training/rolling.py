"""Rolling-origin evaluation: the model choices checked on several forward windows, not one split.

    report = rolling_origin(data, TrainConfig())
    report["pooled"]["recon_error"]["by_rounds"]["600"]

For each origin (60, 65, 70 and 75% of the rows by time) the models are trained on every row
before it and score the next 5% of rows, which they have never seen; the four windows'
scores are pooled into one AUPRC per candidate, with a bootstrap interval paired across
candidates (the same resampled rows for all). All windows lie inside the first 80% of the
data, the pipeline's train + validation stretches: the test stretch is never scored here,
so these figures may choose things.

What is compared:

- **which autoencoder features** feed XGBoost: none (XGBoost alone), the mean
  reconstruction error (the default), the latent code, the per-feature residuals;
- **the rounds cap**: every candidate is scored at every 50 rounds up to 200 past the
  pipeline's cap (800 for the default 600), from the same trees;
- **retraining on newer labels**: the models of the first window (trained up to 60%) score
  all four windows ("static") beside each window's own models ("retrained"), at the
  pipeline's rounds cap.

Per window, the scaler and the autoencoder are fitted on the rows before the origin (the
autoencoder on its normal rows, stopping early on the normal rows of the last fifth of
them, which it does not train on), and each XGBoost candidate on all the rows before it,
as the pipeline's refit does. The windows together hold only the validation stretch's
frauds (57 on the full data): read the intervals.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb
from tqdm.auto import tqdm

from core.dataset import Dataset
from core.ensemble import autoencoder_features, base_inputs, hour_of_day, model_matrix
from core.metrics import average_precision, interval, paired_bootstrap_ap
from core.scaler import Scaler
from training.autoencoder import AutoencoderConfig, fit_autoencoder, torch_threads
from training.booster import DEFAULT_PARAMS, imbalance_weight
from training.config import TrainConfig

ORIGINS: tuple[float, ...] = (0.60, 0.65, 0.70, 0.75)
HORIZON = 0.05
#: Rounds past the pipeline's cap that are scored too, to see whether a higher cap would help.
BEYOND_CAP = 200
STEP = 50
#: Candidates: the autoencoder features each feeds XGBoost ("none" = XGBoost alone).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "none": (),
    "recon_error": ("recon_error",),
    "latent": ("latent",),
    "residuals": ("residuals",),
}
#: A rounds cap counts as enough once its pooled AUPRC is within this of the best cap's.
ROUNDS_TOLERANCE = 0.002


@dataclass(frozen=True)
class Window:
    """Rows before `cut` train; rows `cut` to `end` (positions in time order) are scored."""

    origin: float
    cut: int
    end: int


def windows(n: int, origins: tuple[float, ...] = ORIGINS, horizon: float = HORIZON) -> list[Window]:
    """The forward windows over `n` time-ordered rows; none may reach past 80% (the test stretch)."""
    out = []
    for origin in origins:
        if not 0.0 < origin < origin + horizon <= 0.8 + 1e-9:
            raise ValueError(f"window {origin:.0%} + {horizon:.0%} reaches into the test stretch (past 80%)")
        out.append(Window(origin, int(round(n * origin)), int(round(n * (origin + horizon)))))
    return out


@dataclass(frozen=True)
class _Prepared:
    """One window's inputs: the matrices of each candidate, for its training rows and its scored rows."""

    window: Window
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    train_y: np.ndarray
    test_y: np.ndarray


def _prepare(
    ordered: Dataset, window: Window, config: TrainConfig, candidates: dict[str, tuple[str, ...]]
) -> tuple[_Prepared, Scaler, Any]:
    """Scaler and autoencoder on the rows before the origin; every candidate's matrices."""
    before = ordered.take(slice(0, window.cut))
    after = ordered.take(slice(window.cut, window.end))
    scaler = Scaler("standard").fit(base_inputs(before.raw))
    scaled_before = scaler.transform(base_inputs(before.raw))
    normal = np.flatnonzero(before.labels == 0)
    stop_from = int(round(window.cut * 0.8))
    ae_config = AutoencoderConfig(hidden=config.hidden, epochs=config.epochs)
    with torch_threads(ae_config.threads):
        fit = fit_autoencoder(
            scaled_before[normal[normal < stop_from]],
            scaled_before[normal[normal >= stop_from]],
            ae_config,
            seed=config.seed,
            progress=False,
        )
    prepared = _matrices(ordered, window, scaler, fit.model, candidates, before=before, after=after)
    return prepared, scaler, fit.model


def _matrices(
    ordered: Dataset,
    window: Window,
    scaler: Scaler,
    autoencoder: Any,
    candidates: dict[str, tuple[str, ...]],
    *,
    before: Dataset | None = None,
    after: Dataset | None = None,
) -> _Prepared:
    before = before if before is not None else ordered.take(slice(0, window.cut))
    after = after if after is not None else ordered.take(slice(window.cut, window.end))
    out: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    with torch_threads(1):
        for part, rows in (("train", before), ("test", after)):
            scaled = scaler.transform(base_inputs(rows.raw))
            hours = hour_of_day(rows.raw)
            for name, kinds in candidates.items():
                if not kinds:
                    out[part][name] = np.column_stack([scaled, hours]).astype(np.float32)
                    continue
                columns = autoencoder_features(autoencoder, scaled, kinds)
                out[part][name] = model_matrix(scaled, hours, columns, kinds)
    return _Prepared(window, out["train"], out["test"], before.labels, after.labels)


def _boost(x: np.ndarray, y: np.ndarray, config: TrainConfig, rounds: int) -> xgb.Booster:
    params = {
        **DEFAULT_PARAMS,
        "scale_pos_weight": imbalance_weight(y),
        **config.xgb_params,
        "nthread": 1,
        "seed": config.seed,
    }
    return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=rounds, verbose_eval=False)


def _margins_by_rounds(booster: xgb.Booster, x: np.ndarray, checkpoints: list[int]) -> dict[int, np.ndarray]:
    """The margin (without the base score) of the first r trees on `x`, for each checkpoint r."""
    margin = np.zeros(x.shape[0], dtype=np.float64)
    zero = np.zeros(x.shape[0], dtype=np.float32)
    out, done = {}, 0
    for rounds in checkpoints:
        margin = margin + booster.inplace_predict(
            x, iteration_range=(done, rounds), predict_type="margin", base_margin=zero
        )
        out[rounds], done = margin, rounds
    return out


def rolling_origin(
    data: Dataset,
    config: TrainConfig,
    *,
    origins: tuple[float, ...] = ORIGINS,
    horizon: float = HORIZON,
    max_rounds: int | None = None,
    candidates: dict[str, tuple[str, ...]] | None = None,
    resamples: int = 1000,
) -> dict[str, Any]:
    """Run the evaluation described in the module docstring; return its report (plain JSON data)."""
    started = time.perf_counter()
    candidates = dict(CANDIDATES if candidates is None else candidates)
    cap = config.max_rounds
    max_rounds = cap + BEYOND_CAP if max_rounds is None else max_rounds
    checkpoints = sorted({*range(STEP, max_rounds + 1, STEP), max_rounds, min(cap, max_rounds)})
    ordered = data.take(np.argsort(data.time, kind="stable"))
    plan = windows(len(ordered), origins, horizon)

    total = len(plan) * (1 + len(candidates))
    bar = tqdm(total=total, desc="rolling origin", unit="model", disable=not config.progress, leave=False)
    margins: dict[str, dict[int, dict[int, np.ndarray]]] = {name: {} for name in candidates}
    static: dict[str, list[np.ndarray]] = {}
    first: dict[str, Any] = {}

    def train_one(prepared: _Prepared, index: int, name: str) -> None:
        booster = _boost(prepared.train[name], prepared.train_y, config, max_rounds)
        margins[name][index] = _margins_by_rounds(booster, prepared.test[name], checkpoints)
        if index == 0:
            first[name] = booster
        bar.update(1)

    with ThreadPoolExecutor(max_workers=max(1, config.threads), thread_name_prefix="rolling") as pool:
        jobs: list[Future[None]] = []
        prepared_windows = []
        for index, window in enumerate(plan):
            prepared, scaler, autoencoder = _prepare(ordered, window, config, candidates)
            prepared_windows.append(prepared)
            if index == 0:
                first["scaler"], first["autoencoder"] = scaler, autoencoder
            bar.update(1)
            jobs += [pool.submit(train_one, prepared, index, name) for name in candidates]
        for job in jobs:
            job.result()
    bar.close()

    labels = np.concatenate([p.test_y for p in prepared_windows])
    pooled: dict[str, Any] = {}
    at_cap_scores: dict[str, np.ndarray] = {}
    at = min(cap, max_rounds)
    for name in candidates:
        by_rounds = {
            r: average_precision(labels, np.concatenate([margins[name][i][r] for i in range(len(plan))]))
            for r in checkpoints
        }
        at_cap_scores[name] = np.concatenate([margins[name][i][at] for i in range(len(plan))])
        pooled[name] = {
            "by_rounds": {str(r): round(v, 4) for r, v in by_rounds.items()},
            "per_window_at_cap": [
                round(average_precision(p.test_y, margins[name][i][at]), 4)
                for i, p in enumerate(prepared_windows)
            ],
        }

    # Retraining: the first window's models score every window, beside each window's own.
    for name in ("none", "recon_error"):
        if name not in candidates:
            continue
        scores = []
        for prepared in prepared_windows:
            rows = _matrices(
                ordered, prepared.window, first["scaler"], first["autoencoder"], {name: candidates[name]}
            )
            scores.append(
                first[name].inplace_predict(rows.test[name], iteration_range=(0, at), predict_type="margin")
            )
        static[name] = np.concatenate(scores)

    compare = {**at_cap_scores, **{f"{name} static": s for name, s in static.items()}}
    draws = paired_bootstrap_ap(labels, compare, resamples=resamples, seed=config.seed)
    for name in candidates:
        low, high = interval(draws[name])
        pooled[name]["at_cap"] = {
            "auprc": round(average_precision(labels, at_cap_scores[name]), 4),
            "ci95": [round(low, 4), round(high, 4)],
        }

    def paired(a: str, b: str, a_scores: np.ndarray, b_scores: np.ndarray) -> dict[str, Any]:
        diff = draws[a] - draws[b]
        low, high = interval(diff)
        finite = diff[np.isfinite(diff)]
        return {
            "difference": round(average_precision(labels, a_scores) - average_precision(labels, b_scores), 4),
            "ci95": [round(low, 4), round(high, 4)],
            "share_ahead": round(float(np.mean(finite > 0)), 3),
        }

    differences = {
        f"{name} - recon_error": paired(
            name, "recon_error", at_cap_scores[name], at_cap_scores["recon_error"]
        )
        for name in candidates
        if name != "recon_error" and "recon_error" in candidates
    }
    retraining = {
        name: {
            "static_auprc": round(average_precision(labels, static[name]), 4),
            "retrained_auprc": round(average_precision(labels, at_cap_scores[name]), 4),
            "retrained - static": paired(name, f"{name} static", at_cap_scores[name], static[name]),
        }
        for name in static
    }

    default = "recon_error" if "recon_error" in candidates else next(iter(candidates))
    best_ap = max(float(v) for v in pooled[default]["by_rounds"].values())
    enough = min(int(r) for r, v in pooled[default]["by_rounds"].items() if v >= best_ap - ROUNDS_TOLERANCE)
    best_candidate = max(candidates, key=lambda n: pooled[n]["at_cap"]["auprc"])

    return {
        "protocol": (
            f"train on every row before each origin ({', '.join(f'{o:.0%}' for o in origins)} of the rows "
            f"by time), score the next {horizon:.0%}; AUPRC pooled over the windows, 95% bootstrap "
            f"intervals paired across candidates ({resamples} resamples); the test stretch (last 20%) is never used"
        ),
        "windows": [
            {
                "origin": w.origin,
                "train_rows": w.cut,
                "train_frauds": int(ordered.labels[: w.cut].sum()),
                "scored_rows": w.end - w.cut,
                "scored_frauds": int(ordered.labels[w.cut : w.end].sum()),
                "time_from": float(ordered.time[w.cut]),
                "time_to": float(ordered.time[w.end - 1]),
            }
            for w in plan
        ],
        "candidates": {name: list(kinds) for name, kinds in candidates.items()},
        "rounds_cap": at,
        "pooled": pooled,
        "differences": differences,
        "retraining": retraining,
        "settled": {
            "rounds_enough": enough,
            "rounds_rule": f"fewest rounds whose pooled AUPRC (recon_error) is within {ROUNDS_TOLERANCE} of the best up to {max_rounds}",
            "best_candidate": best_candidate,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text: windows, pooled AUPRC per candidate and rounds, differences, retraining."""
    lines = [f"Rolling-origin evaluation: {report['protocol']}.", ""]
    lines.append("window  trained on rows (frauds)  scored rows (frauds)  data time")
    for w in report["windows"]:
        lines.append(
            f"{w['origin']:>5.0%}   {w['train_rows']:>10,} ({w['train_frauds']:>3})      "
            f"{w['scored_rows']:>8,} ({w['scored_frauds']:>3})      {w['time_from']:,.0f}-{w['time_to']:,.0f} s"
        )
    scored = sum(w["scored_frauds"] for w in report["windows"])
    cap = report["rounds_cap"]
    lines += [
        "",
        f"Pooled AUPRC over {scored} scored frauds, at the rounds cap ({cap}) with its 95% interval:",
    ]
    for name, result in report["pooled"].items():
        low, high = result["at_cap"]["ci95"]
        per_window = ", ".join(f"{v:.3f}" for v in result["per_window_at_cap"])
        lines.append(
            f"  {name:<12} {result['at_cap']['auprc']:.3f} [{low:.3f}, {high:.3f}]   per window {per_window}"
        )
    lines += ["", "Paired differences (the same resampled rows):"]
    for name, diff in report["differences"].items():
        low, high = diff["ci95"]
        lines.append(
            f"  {name:<26} {diff['difference']:+.3f} [{low:+.3f}, {high:+.3f}]  ahead in {diff['share_ahead']:.0%}"
        )
    rounds = list(next(iter(report["pooled"].values()))["by_rounds"])
    lines += ["", "Pooled AUPRC by boosting rounds:", "  rounds       " + " ".join(f"{r:>6}" for r in rounds)]
    for name, result in report["pooled"].items():
        lines.append(f"  {name:<12} " + " ".join(f"{result['by_rounds'][r]:>6.3f}" for r in rounds))
    lines += ["", "Retraining on newer labels (each window's own models vs the first window's, at the cap):"]
    for name, result in report["retraining"].items():
        diff = result["retrained - static"]
        low, high = diff["ci95"]
        lines.append(
            f"  {name:<12} static {result['static_auprc']:.3f}, retrained {result['retrained_auprc']:.3f}: "
            f"{diff['difference']:+.3f} [{low:+.3f}, {high:+.3f}], retrained ahead in {diff['share_ahead']:.0%}"
        )
    settled = report["settled"]
    lines += [
        "",
        f"Rounds enough ({settled['rounds_rule']}): {settled['rounds_enough']}; "
        f"highest pooled AUPRC at the cap: {settled['best_candidate']}.  ({report['seconds']:.0f} s)",
    ]
    return "\n".join(lines)
