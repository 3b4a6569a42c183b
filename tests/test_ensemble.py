"""The bundle reader: loads once, scores like training did, refuses anything altered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.dataset import SAMPLE_PATH, load_csv
from core.ensemble import BundleError, Ensemble
from core.scaler import Scaler
from training.pipeline import TrainResult, train
from training.split import time_split


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(
        SAMPLE_PATH,
        tmp_path_factory.mktemp("m") / "bundle",
        epochs=2,
        max_rounds=60,
        threads=1,
        progress=False,
    )


@pytest.fixture(scope="module")
def test_rows() -> tuple[np.ndarray, np.ndarray]:
    test = time_split(load_csv(SAMPLE_PATH)).test
    return test.raw, test.labels


@pytest.fixture
def copy(trained: TrainResult, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(trained.bundle_dir, target)
    return target


def test_reloaded_bundle_scores_like_the_trained_model(
    trained: TrainResult, test_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    raw, _ = test_rows
    first = Ensemble.load(trained.bundle_dir)
    second = Ensemble.load(trained.bundle_dir)
    a, b = first.score(raw), second.score(raw)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.recon_error, b.recon_error)
    np.testing.assert_allclose(a.score, trained.test_scores["ensemble"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.recon_error, trained.test_scores["autoencoder_alone"], rtol=1e-5)
    assert first.version == trained.manifest["version"] and len(first.version) == 16


def test_score_batch_shapes_and_alerts(
    trained: TrainResult, test_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    raw, labels = test_rows
    ensemble = Ensemble.load(trained.bundle_dir)
    batch = ensemble.score(raw)
    assert batch.score.shape == batch.recon_error.shape == batch.alert.shape == (raw.shape[0],)
    assert batch.score.dtype == np.float64 and batch.alert.dtype == np.bool_
    assert np.all((batch.score >= 0) & (batch.score <= 1)) and np.all(batch.recon_error >= 0)
    assert np.array_equal(batch.alert, batch.score >= ensemble.threshold)
    # The model is useful: frauds score higher than normal rows on average.
    assert batch.score[labels == 1].mean() > 10 * batch.score[labels == 0].mean()


def test_one_row_scores_like_the_same_row_in_a_batch(
    trained: TrainResult, test_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    raw, _ = test_rows
    ensemble = Ensemble.load(trained.bundle_dir)
    batch = ensemble.score(raw[:50]).score
    singles = np.array([ensemble.score(raw[i : i + 1]).score[0] for i in range(50)])
    np.testing.assert_allclose(singles, batch, rtol=1e-6, atol=1e-7)


def test_with_threshold_is_a_copy(trained: TrainResult, test_rows: tuple[np.ndarray, np.ndarray]) -> None:
    raw, _ = test_rows
    ensemble = Ensemble.load(trained.bundle_dir)
    strict = ensemble.with_threshold(0.999999)
    assert strict.threshold == 0.999999 and ensemble.threshold == trained.manifest["model"]["threshold"]
    assert strict.version == ensemble.version
    assert strict.score(raw).alert.sum() <= ensemble.score(raw).alert.sum()
    assert ensemble.with_threshold(0.0).score(raw).alert.all()


def test_explanations_add_up_to_the_score(
    trained: TrainResult, test_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    raw, labels = test_rows
    frauds = raw[labels == 1][:5]
    ensemble = Ensemble.load(trained.bundle_dir)
    explanation = ensemble.explain(frauds)
    assert explanation.contributions.shape == (5, len(ensemble.feature_names))
    margin = explanation.base_value + explanation.contributions.sum(axis=1)
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), ensemble.score(frauds).score, rtol=1e-4, atol=1e-6)
    top = ensemble.top_features(frauds, k=3)
    assert len(top) == 5 and all(len(row) == 3 for row in top)
    for i, row in enumerate(top):
        values = [value for _, value in row]
        assert values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(explanation.contributions[i].max(), rel=1e-6)
        assert all(name in ensemble.feature_names for name, _ in row)


def test_bad_input_shape_is_refused(trained: TrainResult) -> None:
    ensemble = Ensemble.load(trained.bundle_dir)
    with pytest.raises(ValueError, match=r"shape \(n, 30\)"):
        ensemble.score(np.zeros((3, 29)))


def _edit_manifest(bundle: Path, edit) -> None:  # noqa: ANN001 - a small local helper
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_refuses_a_manifest_with_an_edited_threshold(copy: Path) -> None:
    _edit_manifest(copy, lambda m: m["model"].__setitem__("threshold", 0.01))
    with pytest.raises(BundleError, match="version .* does not match"):
        Ensemble.load(copy)


def test_refuses_a_manifest_with_edited_metrics(copy: Path) -> None:
    _edit_manifest(copy, lambda m: m["evaluation"]["test"]["ensemble"].__setitem__("auprc", 0.99))
    with pytest.raises(BundleError, match="checksum does not match"):
        Ensemble.load(copy)


@pytest.mark.parametrize("name", ["autoencoder.pt", "xgboost.ubj"])
def test_refuses_tampered_weights(copy: Path, name: str) -> None:
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name} does not match its hash"):
        Ensemble.load(copy)


def test_refuses_missing_or_malformed_manifest(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        Ensemble.load(tmp_path / "nowhere")
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Ensemble.load(copy)
    (copy / "manifest.json").write_text(json.dumps({"format": "fraudstream-bundle/1"}))
    with pytest.raises(BundleError, match="missing field"):
        Ensemble.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        Ensemble.load(copy)


def test_refuses_a_missing_weights_file(copy: Path) -> None:
    (copy / "xgboost.ubj").unlink()
    with pytest.raises(BundleError, match="missing xgboost.ubj"):
        Ensemble.load(copy)


def test_scaler_round_trips_as_plain_numbers() -> None:
    x = np.array([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0], [5.0, 20.0, 5.0], [7.0, 1000.0, 5.0]])
    standard = Scaler("standard").fit(x)
    assert np.allclose(standard.transform(x).mean(axis=0), 0.0)
    assert np.allclose(standard.transform(x)[:, :2].std(axis=0), 1.0)
    assert standard.scale_[2] == 1.0  # a constant column is left unscaled, not divided by zero
    data = json.loads(json.dumps(standard.to_dict()))
    assert np.array_equal(Scaler.from_dict(data).transform(x), standard.transform(x))
    robust = Scaler("robust").fit(x)
    assert robust.center_[1] == 25.0  # the median, untouched by the 1000
    with pytest.raises(ValueError, match="not fitted"):
        Scaler().transform(x)
    with pytest.raises(ValueError, match="scales positive"):
        Scaler.from_dict({"method": "standard", "center": [0.0], "scale": [0.0]})
