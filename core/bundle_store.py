"""The content-addressed bundle store: one verified, never-changing directory per model version.

    store = BundleStore(settings.resolved_model_store)
    stored = store.put(Path("models/default"))     # copies and verifies; idempotent
    stored.version, stored.path                    # '3f2a...', <store>/3f2a.../

A bundle folder is not an identity: `fraudstream train --out models/default` writes a
new version over the old one in place. So registering a bundle copies it here under its
version (the manifest's content hash), and everything that loads a registered model
loads it from here, by version. A version's directory is written once, through a
temporary directory renamed into place, so a reader never sees half a bundle; the copy
is verified (every file against the manifest's hashes) before the rename, and verified
again by `Ensemble.load` whenever it is loaded.

Scorers and the API must see the same store: on one machine that is the state folder
(the default); across machines, a shared volume (`FRAUDSTREAM_MODEL_STORE`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.bundle import MANIFEST_NAME, BundleError, read_manifest

#: What a version looks like (the manifest's content hash, hex): anything else never
#: becomes a path in the store.
_VERSION_CHARS = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class StoredBundle:
    version: str
    path: Path  # the copy in the store
    source: Path  # the folder it was copied from (resolved)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleStore:
    """Bundles under `root/<version>/`, each written once and verified."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, version: str) -> Path:
        """Where `version` lives (or would live) in the store."""
        if not version or not set(version) <= _VERSION_CHARS:
            raise BundleError(f"{version!r} is not a model version (a hex content hash)")
        return self.root / version

    def put(self, source: Path, *, expected_version: str | None = None) -> StoredBundle:
        """Copy the bundle at `source` into the store (verified); return its version and path.

        Idempotent: a version already stored (and intact) is not copied again. Raises
        `BundleError` if the source is not a valid bundle, is not `expected_version`, or
        changed while it was being copied.
        """
        source = Path(source).resolve()
        manifest = read_manifest(source)
        version = str(manifest["version"])
        if expected_version is not None and version != expected_version:
            raise BundleError(f"{source} holds version {version}, expected {expected_version}")
        target = self.path(version)
        if target.is_dir():
            try:
                read_manifest(target)
                return StoredBundle(version, target, source)
            except BundleError:  # a damaged copy: replace it with a good one below
                shutil.rmtree(target, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".incoming-{version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            for name in [*manifest["files"], MANIFEST_NAME]:
                shutil.copyfile(source / name, staging / name)
                with open(staging / name, "rb") as handle:
                    os.fsync(handle.fileno())
            copied = read_manifest(staging)  # the source may have been rewritten under us
            if copied["version"] != version:
                raise BundleError(f"{source} changed while it was copied into the model store")
            _fsync_dir(staging)
            try:
                staging.rename(target)
            except OSError:  # another process stored the same version first: theirs is as good
                if not target.is_dir():
                    raise
                read_manifest(target)
            _fsync_dir(self.root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return StoredBundle(version, target, source)

    def verify(self, version: str) -> Path:
        """The stored path of `version`, after checking every file; `BundleError` otherwise."""
        path = self.path(version)
        manifest = read_manifest(path)
        if manifest["version"] != version:
            raise BundleError(f"{path} holds version {manifest['version']}, not {version}")
        return path
