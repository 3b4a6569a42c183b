"""A feature scaler that is plain data, so a model bundle can hold it as JSON numbers.

scikit-learn's scalers would need pickle to travel inside the bundle, and loading a bundle
must never execute code. This one is two vectors (`center_`, `scale_`) and a method name.

    >>> import numpy as np
    >>> s = Scaler("standard").fit(np.array([[0.0, 10.0], [2.0, 30.0]]))
    >>> s.transform(np.array([[1.0, 20.0]])).tolist()
    [[0.0, 0.0]]
    >>> Scaler.from_dict(s.to_dict()).scale_.tolist()
    [1.0, 10.0]

`robust` centres on the median and scales by the interquartile range, which keeps a few
extreme amounts from squashing everyone else into a narrow band.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Method = Literal["standard", "robust"]
_METHODS = ("standard", "robust")


@dataclass
class Scaler:
    """Per-column `(x - center_) / scale_`; learned attributes end with `_` (scikit-learn style)."""

    method: Method = "standard"
    center_: np.ndarray | None = field(default=None, repr=False)
    scale_: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"unknown scaling method {self.method!r}; expected one of {_METHODS}")

    def fit(self, x: np.ndarray) -> Scaler:
        """Learn centre and scale per column of a 2-D array; returns self."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"fit needs a non-empty 2-D array, got shape {x.shape}")
        if self.method == "standard":
            center = x.mean(axis=0)
            scale = x.std(axis=0)
        else:
            q1, center, q3 = np.percentile(x, [25.0, 50.0, 75.0], axis=0)
            scale = q3 - q1
        # A constant column would divide by zero; leave it unscaled instead.
        scale = np.where(scale > 1e-12, scale, 1.0)
        self.center_ = center
        self.scale_ = scale
        return self

    @property
    def is_fitted(self) -> bool:
        return self.center_ is not None and self.scale_ is not None

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale a 2-D array (n, n_features) column by column; returns a new float64 array."""
        if not self.is_fitted:
            raise ValueError("Scaler is not fitted; call fit() or from_dict() first")
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1] != self.center_.shape[0]:
            raise ValueError(f"expected {self.center_.shape[0]} columns, got {x.shape[-1]}")
        return (x - self.center_) / self.scale_

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the method and the two vectors as lists of floats."""
        if self.center_ is None or self.scale_ is None:
            raise ValueError("Scaler is not fitted; nothing to serialise")
        return {
            "method": self.method,
            "center": [float(v) for v in self.center_],
            "scale": [float(v) for v in self.scale_],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaler:
        """Rebuild from `to_dict` output, checking shapes and values."""
        try:
            center = np.asarray(data["center"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
            method = data["method"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed scaler parameters: {exc}") from exc
        if center.ndim != 1 or center.shape != scale.shape:
            raise ValueError("malformed scaler parameters: center and scale must be equal-length lists")
        if not (np.all(np.isfinite(center)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError("malformed scaler parameters: values must be finite and scales positive")
        return cls(method=method, center_=center, scale_=scale)
