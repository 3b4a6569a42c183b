"""Pieces the benchmarks share for standing up what they measure."""

from __future__ import annotations

from pathlib import Path

from core.dataset import SAMPLE_PATH

#: Where spawned service processes start, so they import this checkout's code.
REPO_ROOT = Path(__file__).resolve().parents[1]


def sample_bundle(out: Path, *, progress: bool = False, seed: int | None = None) -> Path:
    """A quick bundle trained on the shipped sample (3 autoencoder epochs), for benches given no
    model; `seed` gives another bundle of the same recipe (a challenger)."""
    from training.pipeline import train

    print(f"training a bundle on the shipped sample -> {out}", flush=True)
    train(SAMPLE_PATH, out, epochs=3, progress=progress, **({"seed": seed} if seed is not None else {}))
    return out
