"""Training on the shipped sample: time-ordered split, a complete bundle, the CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.bundle import read_manifest
from core.dataset import SAMPLE_PATH, load_csv
from core.ensemble import Autoencoder
from training.autoencoder import Adam, AutoencoderConfig, fit_autoencoder
from training.cli import main
from training.config import TrainConfig
from training.pipeline import MODELS, train
from training.split import time_split

FAST = ["--epochs", "2", "--max-rounds", "60", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """One real training run through the command line, shared by the tests below."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("bundle") / "default"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["--out", str(out), "--seed", "3", *FAST])
    return out, code, buffer.getvalue()


def test_split_is_time_ordered_60_20_20() -> None:
    data = load_csv(SAMPLE_PATH)
    # Shuffle the rows: the split must order by Time itself, not trust the file order.
    shuffled = data.take(np.random.default_rng(0).permutation(len(data)))
    split = time_split(shuffled)
    assert split.train.time.max() <= split.validation.time.min()
    assert split.validation.time.max() <= split.test.time.min()
    assert split.train.time.max() <= split.test.time.min()
    assert [len(split.train), len(split.validation), len(split.test)] == [17_358, 5_786, 5_786]
    assert len(split.train) + len(split.validation) + len(split.test) == len(data)
    assert split.train.fraud_count + split.validation.fraud_count + split.test.fraud_count == 492


def test_cli_trains_a_bundle_and_prints_the_table(cli_run: tuple[Path, int, str]) -> None:
    out, code, printed = cli_run
    assert code == 0
    for name in ("manifest.json", "autoencoder.pt", "xgboost.ubj", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = read_manifest(out)
    assert manifest["version"] in printed
    for name in MODELS:
        assert name in printed


def test_manifest_records_what_the_issue_asks_for(cli_run: tuple[Path, int, str]) -> None:
    manifest = json.loads((cli_run[0] / "manifest.json").read_text())
    model, training, evaluation = manifest["model"], manifest["training"], manifest["evaluation"]
    assert model["feature_names"][:29] == [*(f"V{i}" for i in range(1, 29)), "log_amount"]
    assert "Time" not in model["feature_names"]
    assert len(model["scaler"]["center"]) == 29
    assert 0.0 < model["threshold"] < 1.0 and model["threshold_rule"]["rule"] == "f1"
    splits = training["data"]["splits"]
    assert splits["train"]["time_max"] <= splits["validation"]["time_min"] <= splits["test"]["time_min"]
    assert sum(part["rows"] for part in splits.values()) == 28_930
    for stretch in ("validation", "test"):
        for name in MODELS:
            row = evaluation[stretch][name]
            assert 0.0 < row["auprc"] <= 1.0
            assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == row["rows"]
    assert evaluation["test"]["ensemble"]["frauds"] == splits["test"]["frauds"]
    for name in MODELS:
        pr = evaluation["curves"][name]["pr"]
        assert 2 <= len(pr["precision"]) <= 300 and len(pr["precision"]) == len(pr["recall"])
    importance = evaluation["feature_importance"]["values"]
    assert set(importance) == set(model["feature_names"])
    assert sum(importance.values()) == pytest.approx(1.0, abs=1e-3)
    assert {"torch", "xgboost", "numpy"} <= set(training["libraries"])


def test_same_seed_gives_the_same_model_on_one_core_or_two(
    tmp_path: Path, cli_run: tuple[Path, int, str]
) -> None:
    # The CLI run trained everything in a row (--threads 1); this one trains the two XGBoost
    # models side by side. The bundle must be the same bit for bit.
    again = train(SAMPLE_PATH, tmp_path / "again", seed=3, epochs=2, max_rounds=60, threads=2, progress=False)
    first = read_manifest(cli_run[0])
    assert again.manifest["model"] == first["model"]
    assert again.manifest["files"] == first["files"]
    assert again.manifest["version"] == first["version"]
    lanes = {s["stage"]: s["thread"] for s in again.timing["stages"]}
    assert lanes["autoencoder"] == lanes["write_bundle"] == "MainThread"
    assert lanes["boosters: ensemble"] != "MainThread" and lanes["boosters: xgboost_alone"] != "MainThread"
    assert lanes["refit: ensemble"] == lanes["boosters: ensemble"]  # a model stays on its thread


def test_manifest_times_every_stage(cli_run: tuple[Path, int, str]) -> None:
    timing = read_manifest(cli_run[0])["training"]["timing"]
    stages = [s["stage"] for s in timing["stages"]]
    for name in (
        "load_and_split",
        "scale",
        "autoencoder",
        "boosters: ensemble",
        "boosters: xgboost_alone",
        "threshold",
        "refit: ensemble",
        "refit: xgboost_alone",
        "test scores: ensemble",
        "test scores: xgboost_alone",
        "reference",
        "evaluate",
    ):
        assert stages.count(name) == 1, name
    for stage in timing["stages"]:
        assert stage["wall_seconds"] >= 0 and stage["cpu_seconds"] >= 0
    assert timing["cpu_seconds"] > 0 and timing["wall_seconds"] > 0
    # Each model refits after its own fit.
    start = {s["stage"]: s["start_seconds"] for s in timing["stages"]}
    assert start["refit: ensemble"] >= start["boosters: ensemble"]
    assert start["boosters: ensemble"] >= start["autoencoder"]


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="threshold rule"):
        TrainConfig(threshold_rule="magic")
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0)
    with pytest.raises(ValueError, match="ae_features"):
        TrainConfig(ae_features=("pixels",))
    assert TrainConfig(hidden=[8, 4]) == TrainConfig(hidden=(8, 4))


def test_the_autoencoder_leaves_openmp_threads_as_it_found_them() -> None:
    # torch and XGBoost share one OpenMP runtime; XGBoost caps its threads at OpenMP's
    # count for the calling thread. Training the autoencoder on one torch thread used to
    # leave that count at 1, so the XGBoost models that followed ran on one core.
    import ctypes

    import torch

    gomp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not gomp.exists():
        pytest.skip("this torch build has no bundled libgomp")
    omp_max_threads = ctypes.CDLL(str(gomp)).omp_get_max_threads
    torch.set_num_threads(2)
    assert omp_max_threads() == 2
    rng = np.random.default_rng(0)
    fit_autoencoder(
        rng.standard_normal((256, 29)),
        rng.standard_normal((64, 29)),
        AutoencoderConfig(epochs=1),
        progress=False,
    )
    assert torch.get_num_threads() == 2
    assert omp_max_threads() == 2


def test_adam_updates_like_torch_optim_adam() -> None:
    import torch

    def run(make_optimiser) -> list[torch.Tensor]:  # noqa: ANN001 - a local helper
        torch.manual_seed(0)
        model = Autoencoder(29, [16, 4])
        optimiser = make_optimiser(model.parameters())
        x = torch.randn(128, 29)
        for _ in range(25):
            recon, _ = model(x)
            loss = torch.mean((recon - x) ** 2)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return [p.detach().clone() for p in model.parameters()]

    ours = run(lambda params: Adam(params, lr=3e-3, weight_decay=1e-5))
    theirs = run(lambda params: torch.optim.Adam(params, lr=3e-3, weight_decay=1e-5))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_threshold_rules_are_applied(tmp_path: Path) -> None:
    result = train(
        SAMPLE_PATH,
        tmp_path / "b",
        threshold_rule="alert-rate",
        alert_rate=0.02,
        epochs=1,
        max_rounds=60,
        progress=False,
    )
    chosen = result.manifest["training"]["threshold_on_validation"]["ensemble"]
    assert chosen["rule"] == "alert-rate" and chosen["alert_rate"] <= 0.02 and "note" not in chosen
    assert result.manifest["model"]["threshold_rule"] == {"rule": "alert-rate", "alert_rate": 0.02}


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no model bundle"):
        train(SAMPLE_PATH, tmp_path, epochs=1, max_rounds=60, threads=1, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold-rule", "magic"], "invalid choice: 'magic'"),
        (["--epochs", "0"], "must be a positive integer"),
        (["--target-precision", "1.5"], "between 0 and 1"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--data", "/nonexistent/creditcard.csv"], "no such file"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*argv, "--out", str(tmp_path / "m"), *FAST]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cli_bad_csv_exits_2_naming_the_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text('"Time","V1"\n0,1\n')
    assert main(["--data", str(bad), "--out", str(tmp_path / "m"), *FAST]) == 2
    assert "missing column 'V2'" in capsys.readouterr().err
