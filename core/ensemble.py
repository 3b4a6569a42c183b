"""The hybrid fraud model as one object: load a bundle once, score numpy batches.

    ensemble = Ensemble.load("models/default")
    batch = ensemble.score(raw)          # raw: (n, 30) float64 in RAW_FEATURES order
    batch.score, batch.recon_error, batch.alert
    ensemble.top_features(raw, k=3)      # why: TreeSHAP contributions per row

The scoring path, shared with training so the two cannot drift apart:

1. `base_inputs`: V1..V28 and log(1 + Amount) (amounts are heavy-tailed; the log keeps
   the autoencoder's squared error from being all about amount). Raw Time is not a
   feature: over two days it only says "early or late in the data", which does not carry
   to new data; `hour_of_day` does.
2. the bundle's `Scaler` (fitted on the training stretch only).
3. the `Autoencoder` (trained on normal training rows) gives the reconstruction error and,
   as the bundle's manifest selects, the per-feature residuals and the latent code.
4. XGBoost on the scaled inputs + hour + the autoencoder features gives the fraud score.

Everything is vectorised numpy/torch; there is no pandas and no per-row Python here, so
the same call serves one API request and a scorer batch of thousands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xgboost as xgb
from torch import nn

from core.bundle import BundleError, read_manifest
from core.features import PCA_COLUMNS, RAW_FEATURES
from core.scaler import Scaler

__all__ = [
    "AE_FEATURE_KINDS",
    "Autoencoder",
    "BASE_FEATURES",
    "BundleError",
    "Ensemble",
    "Explanation",
    "ScoreBatch",
    "autoencoder_features",
    "base_inputs",
    "feature_names",
    "hour_of_day",
    "model_matrix",
]

#: Inputs of the autoencoder and the scaler, in order.
BASE_FEATURES: tuple[str, ...] = (*PCA_COLUMNS, "log_amount")
#: What the autoencoder can contribute to XGBoost's inputs (the manifest picks a subset).
AE_FEATURE_KINDS: tuple[str, ...] = ("recon_error", "residuals", "latent")
_AMOUNT = RAW_FEATURES.index("Amount")
_TIME = RAW_FEATURES.index("Time")
_SECONDS_PER_DAY = 86_400.0


def base_inputs(raw: np.ndarray) -> np.ndarray:
    """(n, 30) raw rows → (n, 29) V1..V28 and log(1 + Amount), before scaling."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(RAW_FEATURES):
        raise ValueError(f"expected raw rows of shape (n, {len(RAW_FEATURES)}), got {raw.shape}")
    out = np.empty((raw.shape[0], len(BASE_FEATURES)), dtype=np.float64)
    out[:, :-1] = raw[:, 1 : 1 + len(PCA_COLUMNS)]
    out[:, -1] = np.log1p(np.maximum(raw[:, _AMOUNT], 0.0))
    return out


def hour_of_day(raw: np.ndarray) -> np.ndarray:
    """Hour of the day (0..24, fractional) from Time, assuming the data start at midnight."""
    return np.mod(np.asarray(raw, dtype=np.float64)[:, _TIME], _SECONDS_PER_DAY) / 3600.0


class Autoencoder(nn.Module):
    """A symmetric MLP autoencoder; `hidden` lists the encoder widths down to the code size.

    Built from plain numbers in the manifest, so its weights load as a state dict with
    `torch.load(weights_only=True)`.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("the autoencoder needs at least one hidden layer")
        self.input_dim = int(input_dim)
        self.hidden = [int(h) for h in hidden]
        widths = [self.input_dim, *self.hidden]
        encoder: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            encoder.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                encoder.append(nn.ReLU())
        decoder: list[nn.Module] = []
        back = widths[::-1]
        for i, (a, b) in enumerate(zip(back[:-1], back[1:], strict=True)):
            decoder.append(nn.Linear(a, b))
            if i < len(back) - 2:
                decoder.append(nn.ReLU())
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (reconstruction, latent code)."""
        code = self.encoder(x)
        return self.decoder(code), code

    @property
    def latent_dim(self) -> int:
        return self.hidden[-1]


def autoencoder_features(model: Autoencoder, scaled: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
    """The autoencoder's extra columns for XGBoost, in the order of `kinds`.

    `recon_error` is the mean squared residual (the "how unusual" score); `residuals` are
    the signed per-feature residuals (which features are unusual, and which way); `latent`
    is the code. Column 0 is always the mean squared error, whether or not it is a model
    feature, because `ScoreBatch.recon_error` reports it.
    """
    unknown = [k for k in kinds if k not in AE_FEATURE_KINDS]
    if unknown:
        raise ValueError(f"unknown autoencoder feature kind(s) {unknown}; expected {AE_FEATURE_KINDS}")
    x = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))
    with torch.inference_mode():
        recon, code = model(x)
        residuals = (x - recon).numpy()
        code_np = code.numpy()
    mse = np.mean(np.square(residuals, dtype=np.float64), axis=1)
    columns = [mse[:, None]]
    for kind in kinds:
        if kind == "recon_error":
            continue
        columns.append(residuals if kind == "residuals" else code_np)
    return np.concatenate(columns, axis=1, dtype=np.float64)


def feature_names(kinds: Sequence[str], latent_dim: int) -> list[str]:
    """XGBoost's input names: scaled base features, hour, then the autoencoder columns."""
    names = [*BASE_FEATURES, "hour"]
    for kind in kinds:
        if kind == "recon_error":
            names.append("ae_recon_error")
        elif kind == "residuals":
            names.extend(f"ae_res_{name}" for name in BASE_FEATURES)
        elif kind == "latent":
            names.extend(f"ae_z{i}" for i in range(latent_dim))
    return names


def model_matrix(
    scaled: np.ndarray, hour: np.ndarray, ae_columns: np.ndarray, kinds: Sequence[str]
) -> np.ndarray:
    """Assemble XGBoost's float32 input from the pieces (see `feature_names` for the order).

    `ae_columns` is `autoencoder_features` output: column 0 is the mean squared error,
    included only when "recon_error" is one of `kinds`.
    """
    keep = ae_columns if "recon_error" in kinds else ae_columns[:, 1:]
    return np.concatenate([scaled, hour[:, None], keep], axis=1, dtype=np.float32)


@dataclass(frozen=True)
class ScoreBatch:
    """Scores for a batch: fraud probability, reconstruction error, alert flag (score >= threshold)."""

    score: np.ndarray
    recon_error: np.ndarray
    alert: np.ndarray


@dataclass(frozen=True)
class Explanation:
    """TreeSHAP contributions in margin (log-odds) space: `base_value + contributions.sum(1)` = margin."""

    contributions: np.ndarray
    feature_names: list[str]
    base_value: float
    score: np.ndarray


@dataclass(frozen=True)
class Ensemble:
    """A loaded model bundle. Immutable: `with_threshold` returns a copy sharing the models."""

    version: str
    threshold: float
    manifest: dict[str, Any]
    feature_names: list[str]
    scaler: Scaler = dataclasses.field(repr=False)
    autoencoder: Autoencoder = dataclasses.field(repr=False)
    booster: xgb.Booster = dataclasses.field(repr=False)
    ae_kinds: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: str | Path, *, torch_threads: int | None = 1) -> Ensemble:
        """Verify and load a bundle directory (see `core.bundle.read_manifest` for the checks).

        `torch_threads` sets torch's (process-wide) intra-op threads: the autoencoder is a few
        small matrix products, and one thread avoids thread hand-off costs on single rows and
        leaves the other cores to other workers. Pass None to leave torch's setting alone.
        """
        path = Path(path)
        manifest = read_manifest(path)
        try:
            model = manifest["model"]
            scaler = Scaler.from_dict(model["scaler"])
            ae_spec = model["autoencoder"]
            kinds = tuple(model["ae_features"])
            names = list(model["feature_names"])
            threshold = float(model["threshold"])
            ae_file = ae_spec["file"]
            xgb_file = model["xgboost"]["file"]
            autoencoder = Autoencoder(int(ae_spec["input_dim"]), list(ae_spec["hidden"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: malformed model section in the manifest: {exc!r}") from exc
        for name in (ae_file, xgb_file):
            if name not in manifest["files"]:
                raise BundleError(f"{path}: {name} is used by the model but not hashed in the manifest")
        if list(model.get("raw_features", RAW_FEATURES)) != list(RAW_FEATURES):
            raise BundleError(f"{path}: the bundle expects raw features {model.get('raw_features')}")
        expected_names = feature_names(kinds, autoencoder.latent_dim)
        if names != expected_names or scaler.center_ is None or scaler.center_.shape[0] != len(BASE_FEATURES):
            raise BundleError(
                f"{path}: feature order in the manifest does not match this version of the code"
            )

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        try:
            state = torch.load(path / ae_file, map_location="cpu", weights_only=True)
            autoencoder.load_state_dict(state, strict=True)
        except Exception as exc:  # torch raises many types for a bad file; all mean "refuse"
            raise BundleError(f"{path}: cannot load autoencoder weights {ae_file}: {exc}") from exc
        autoencoder.eval()
        for parameter in autoencoder.parameters():
            parameter.requires_grad_(False)

        booster = xgb.Booster()
        try:
            booster.load_model(str(path / xgb_file))
        except xgb.core.XGBoostError as exc:
            raise BundleError(f"{path}: cannot load XGBoost model {xgb_file}: {exc}") from exc
        if booster.num_features() != len(names):
            raise BundleError(
                f"{path}: XGBoost expects {booster.num_features()} features, manifest lists {len(names)}"
            )
        booster.set_param({"nthread": 1})
        return cls(
            version=str(manifest["version"]),
            threshold=threshold,
            manifest=manifest,
            feature_names=names,
            scaler=scaler,
            autoencoder=autoencoder,
            booster=booster,
            ae_kinds=kinds,
        )

    def with_threshold(self, threshold: float) -> Ensemble:
        """The same models with another alert threshold (for backtests and what-ifs)."""
        return dataclasses.replace(self, threshold=float(threshold))

    def _features(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(XGBoost input matrix, reconstruction error) for raw rows."""
        scaled = self.scaler.transform(base_inputs(raw))
        ae_columns = autoencoder_features(self.autoencoder, scaled, self.ae_kinds)
        matrix = model_matrix(scaled, hour_of_day(raw), ae_columns, self.ae_kinds)
        return matrix, ae_columns[:, 0]

    def score(self, raw: np.ndarray) -> ScoreBatch:
        """Score (n, 30) raw rows in RAW_FEATURES order; one call for one row or thousands."""
        matrix, recon_error = self._features(raw)
        score = np.asarray(self.booster.inplace_predict(matrix, validate_features=False), dtype=np.float64)
        return ScoreBatch(score=score, recon_error=recon_error, alert=score >= self.threshold)

    def explain(self, raw: np.ndarray) -> Explanation:
        """Per-row TreeSHAP contributions of each model feature to the fraud log-odds."""
        matrix, _ = self._features(raw)
        dmatrix = xgb.DMatrix(matrix, feature_names=self.feature_names)
        contribs = self.booster.predict(dmatrix, pred_contribs=True)
        margin = contribs.sum(axis=1, dtype=np.float64)
        return Explanation(
            contributions=np.asarray(contribs[:, :-1], dtype=np.float64),
            feature_names=list(self.feature_names),
            base_value=float(contribs[0, -1]) if len(contribs) else 0.0,
            score=1.0 / (1.0 + np.exp(-margin)),
        )

    def top_features(self, raw: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each row, the k features that pushed its score up the most, with their contributions."""
        explanation = self.explain(raw)
        order = np.argsort(-explanation.contributions, axis=1, kind="stable")[:, :k]
        return [
            [(self.feature_names[j], float(explanation.contributions[i, j])) for j in order[i]]
            for i in range(order.shape[0])
        ]
