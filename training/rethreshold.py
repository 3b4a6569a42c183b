"""A bundle that differs from another only in its alert threshold: how a threshold goes live.

The model files are copied byte for byte and the manifest keeps every section, with
`model.threshold` changed and a `threshold_by_cost` section saying where it came from; the
version is recomputed (it hashes the model section), so the registry, the scorer's hot
reload and the audit trail treat it as the new version it is, with no retraining.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core.bundle import read_manifest, write_manifest

_STAMPED = ("format", "files", "version", "checksum")  # written afresh by write_manifest


def rethresholded(source: Path, out: Path, threshold: float, why: dict[str, Any]) -> dict[str, Any]:
    """Write `source` with `threshold` into the empty or new directory `out`; its manifest.

    `why` is kept in the manifest (`threshold_by_cost`) beside the source version and the
    threshold it replaces. Refuses a non-empty `out` (never mixes two bundles' files).
    """
    manifest = read_manifest(source)  # verified: a tampered source is refused here
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: give an empty or new directory")
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(manifest["files"])
    for name in files:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
    body = {key: value for key, value in manifest.items() if key not in _STAMPED}
    body["model"] = {**manifest["model"], "threshold": float(threshold)}
    body["threshold_by_cost"] = {
        "from_version": manifest["version"],
        "previous_threshold": float(manifest["model"]["threshold"]),
        **why,
    }
    return write_manifest(out, body, files)
