"""The model bundle's manifest: writing it, reading it, and proving it was not altered.

A bundle is a directory: `manifest.json` plus the files it lists (autoencoder weights,
the XGBoost model in UBJ, the curves PNG). The manifest holds everything else as plain
JSON: feature order, scaler parameters, threshold and the rule that chose it, the
training data range, evaluation metrics, curves as data, feature importance, library
versions.

Two hashes guard it, so that a bundle that scores differently from what it claims is
refused before it scores anything:

- `version`: sha256 over the files' hashes and the `model` section (everything that
  changes a score or an alert). Retraining that produces the same model gives the same
  version; any change to weights, scaler or threshold gives a new one.
- `checksum`: sha256 over the whole manifest except itself, so an edited metric or data
  range is caught too.

Nothing here unpickles or imports anything named in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "fraudstream-bundle/1"
VERSION_LENGTH = 16
_REQUIRED = ("format", "version", "checksum", "files", "model")


class BundleError(ValueError):
    """A bundle directory that cannot be trusted: missing, malformed or altered."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(data: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace, so hashes are stable."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def compute_version(file_hashes: dict[str, str], model: dict[str, Any]) -> str:
    """Content hash of the model: the files' hashes plus the scoring configuration."""
    digest = hashlib.sha256()
    for name in sorted(file_hashes):
        digest.update(f"{name}\0{file_hashes[name]}\n".encode())
    digest.update(canonical_json(model))
    return digest.hexdigest()[:VERSION_LENGTH]


def compute_checksum(manifest: dict[str, Any]) -> str:
    """sha256 over the manifest without its own `checksum` field."""
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def write_manifest(bundle_dir: Path, body: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Hash `files` (names inside `bundle_dir`), stamp version and checksum, write the manifest.

    `body` must hold a `model` section; other sections (training, evaluation, ...) are
    stored as given. Returns the manifest as written. The file is written to a temporary
    name and renamed, so a reader never sees half a manifest.
    """
    bundle_dir = Path(bundle_dir)
    if "model" not in body:
        raise ValueError("manifest body needs a 'model' section")
    hashes = {name: file_sha256(bundle_dir / name) for name in sorted(files)}
    manifest = {"format": FORMAT, **body, "files": hashes}
    manifest["version"] = compute_version(hashes, body["model"])
    manifest["checksum"] = compute_checksum(manifest)
    target = bundle_dir / MANIFEST_NAME
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n")
    os.replace(temporary, target)
    return manifest


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and verify a bundle's manifest; raise `BundleError` saying what is wrong.

    Checks, in order: the directory and manifest exist, the manifest is a JSON object with
    the required fields and the known format, every listed file exists and matches its
    hash, and both `version` and `checksum` match the content.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"model bundle not found: {bundle_dir} is not a directory")
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"model bundle {bundle_dir} has no {MANIFEST_NAME}")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: malformed manifest, not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: malformed manifest, expected a JSON object")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise BundleError(f"{path}: malformed manifest, missing field(s): {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{path}: unsupported bundle format {manifest['format']!r}, expected {FORMAT!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or not isinstance(manifest["model"], dict):
        raise BundleError(f"{path}: malformed manifest, 'files' and 'model' must be objects")

    for name, expected in files.items():
        if Path(name).name != name:
            raise BundleError(f"{path}: file name {name!r} must be a plain name inside the bundle")
        file_path = bundle_dir / name
        if not file_path.is_file():
            raise BundleError(f"model bundle {bundle_dir} is missing {name}, listed in the manifest")
        actual = file_sha256(file_path)
        if actual != expected:
            raise BundleError(
                f"model bundle {bundle_dir}: {name} does not match its hash in the manifest "
                f"(expected {str(expected)[:12]}..., found {actual[:12]}...): the file was altered"
            )
    try:
        version = compute_version(files, manifest["model"])
        checksum = compute_checksum(manifest)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path}: malformed manifest: {exc}") from exc
    if manifest["version"] != version:
        raise BundleError(
            f"{path}: version {manifest['version']!r} does not match the content (computed {version!r}): "
            "the model section or a file was altered"
        )
    if manifest["checksum"] != checksum:
        raise BundleError(f"{path}: checksum does not match: the manifest was altered after it was written")
    return manifest
