"""Inference through ONNX Runtime is the torch function: the ranker (one shared history and
per-row histories, each variant exported from its own kind of rows and run at other row
counts), the user tower (exported from one user, run on several and back), re-export after
the weights change in place, the switch, and the modules left in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import user_tower_inputs
from marketrec.core import onnx_forward
from marketrec.ranking.features import CATEGORICAL, NUMERIC, Features
from marketrec.ranking.model import Ranker
from marketrec.ranking.training import _tensors, predict

pytest.importorskip("onnxruntime")


def _ranker(seed: int) -> Ranker:
    torch.manual_seed(seed)
    model = Ranker(dict.fromkeys(CATEGORICAL, 40))
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)  # the zero-initialised head too
    return model.eval()


def _features(rows: int, shared: bool, seed: int) -> Features:
    rng = np.random.default_rng(seed)
    recent = rng.integers(1, 40, (1 if shared else rows, 10))
    recent[:, :2] = 0  # padding
    recent_category = rng.integers(0, 40, recent.shape)
    if shared:
        recent, recent_category = recent.repeat(rows, 0), recent_category.repeat(rows, 0)
    else:
        recent[0] = 0  # a user without recent items
    return Features(
        rng.normal(size=(rows, len(NUMERIC))).astype(np.float32),
        rng.integers(0, 40, (rows, len(CATEGORICAL))),
        recent,
        recent_category,
    )


def _torch_logits(model: Ranker, features: Features) -> np.ndarray:
    with torch.inference_mode():
        return model(*_tensors(features)).numpy()


@pytest.fixture(autouse=True)
def _onnx_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(onnx_forward.ENV_SWITCH, "1")


@pytest.mark.parametrize("first_rows", [1, 300])
def test_ranker_variants_equal_torch_at_any_row_count(first_rows: int) -> None:
    model = _ranker(0)
    # the first call exports each variant from rows of that kind; later calls reuse it
    calls = [(first_rows, True), (7, False), (300, True), (2, True), (1, True), (50, False)]
    for seed, (rows, shared) in enumerate(calls):
        features = _features(rows, shared, seed)
        got = predict(model, features, fast=True)
        want = _torch_logits(model, features)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
        assert want.std() > 0.5 or rows < 3  # non-trivial outputs
    assert set(onnx_forward._cache[model]) == {"shared", "rows"}  # both ran through ONNX
    assert not model.training


def test_ranker_is_exported_again_after_an_in_place_update() -> None:
    model = _ranker(1)
    features = _features(40, True, 0)
    before = predict(model, features, fast=True)
    with torch.no_grad():
        model.head.weight.add_(0.5)  # what an optimizer step does
    after = predict(model, features, fast=True)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _torch_logits(model, features), rtol=1e-5, atol=2e-5)


def test_the_switch_and_training_mode_run_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _ranker(2)
    features = _features(20, True, 0)
    monkeypatch.setenv(onnx_forward.ENV_SWITCH, "0")
    predict(model, features, fast=True)
    assert model not in onnx_forward._cache
    monkeypatch.setenv(onnx_forward.ENV_SWITCH, "1")
    model.train()
    assert onnx_forward.onnx_forward(model, "shared", lambda: pytest.fail("exported")) is None


def test_a_failed_export_falls_back_to_torch_once(caplog: pytest.LogCaptureFixture) -> None:
    model = _ranker(3)

    def broken() -> tuple:
        raise RuntimeError("no exporter here")

    assert onnx_forward.onnx_forward(model, "v", broken) is None
    assert "no exporter here" in caplog.text
    assert onnx_forward.onnx_forward(model, "v", lambda: pytest.fail("tried again")) is None
    assert not model.training


def test_user_tower_through_onnx_equals_torch_for_one_and_several_users() -> None:
    from marketrec.retrieval.training import _users_onnx

    torch.manual_seed(4)
    tower = user_tower_inputs(1, dropout=0.3)[0]  # dropout would show a training pass
    tower.eval()

    def inputs(rows: int, history_length: int) -> tuple[dict, torch.Tensor]:
        _, f, history, queries = user_tower_inputs(rows, history_length)
        return {**f, "queries": queries}, history

    for rows, history_length in [(1, 4), (6, 4), (3, 7), (1, 4)]:
        f, history = inputs(rows, history_length)
        got = _users_onnx(tower, f, history)
        assert got is not None
        with torch.inference_mode():
            want = tower(f, history, f["queries"])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert want.std() > 0.05
    assert not tower.training  # the export's wrapper did not switch the tower to training
    tower.train()
    assert _users_onnx(tower, *inputs(2, 4)) is None


def _no_export(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any new export fail the test's expectations: returns the variants exported."""
    exported: list[str] = []
    real = onnx_forward._exported

    def counting(export):  # type: ignore[no-untyped-def]
        exported.append("export")
        return real(export)

    monkeypatch.setattr(onnx_forward, "_exported", counting)
    return exported


def test_saved_exports_serve_a_loaded_copy_without_exporting(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _ranker(5)
    shared, rows = _features(30, True, 1), _features(9, False, 2)
    predict(model, shared, fast=True)
    predict(model, rows, fast=True)
    written = onnx_forward.save_exports({"ranker": model}, tmp_path)
    assert sorted(written) == ["ranker/rows.onnx", "ranker/shared.onnx"]

    copy = _ranker(5)  # the same weights, as a model folder loads them
    assert onnx_forward.load_exports({"ranker": copy}, tmp_path) == [
        "ranker/rows",
        "ranker/shared",
    ]
    exported = _no_export(monkeypatch)
    for features in (shared, rows, _features(4, True, 3)):
        np.testing.assert_allclose(
            predict(copy, features, fast=True), _torch_logits(copy, features), rtol=1e-5, atol=2e-5
        )
    assert exported == [] and set(onnx_forward._cache[copy]) == {"shared", "rows"}

    # weights changed after loading: the saved export is stale, a new one is made
    with torch.no_grad():
        copy.head.weight.add_(0.5)
    after = predict(copy, shared, fast=True)
    np.testing.assert_allclose(after, _torch_logits(copy, shared), rtol=1e-5, atol=2e-5)
    assert exported == ["export"]


def test_saved_exports_of_other_weights_or_damaged_are_not_used(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = _ranker(6)
    shared = _features(12, True, 4)
    predict(model, shared, fast=True)
    onnx_forward.save_exports({"ranker": model}, tmp_path)
    other = _ranker(7)  # other weights under the same name
    assert onnx_forward.load_exports({"ranker": other}, tmp_path) == []
    assert "other weights" in caplog.text
    exported = _no_export(monkeypatch)
    np.testing.assert_allclose(
        predict(other, shared, fast=True), _torch_logits(other, shared), rtol=1e-5, atol=2e-5
    )
    assert exported == ["export"]

    (tmp_path / "ranker" / "shared.onnx").write_bytes(b"not an onnx model")
    damaged = _ranker(6)
    assert onnx_forward.load_exports({"ranker": damaged}, tmp_path) == ["ranker/shared"]
    np.testing.assert_allclose(
        predict(damaged, shared, fast=True), _torch_logits(damaged, shared), rtol=1e-5, atol=2e-5
    )
    assert exported == ["export", "export"] and "exporting again" in caplog.text
    # nothing saved for a module that never ran through ONNX; nothing to load is no error
    assert onnx_forward.save_exports({"idle": _ranker(8)}, tmp_path / "none") == []
    assert onnx_forward.load_exports({"idle": _ranker(8)}, tmp_path / "none") == []


def test_an_export_in_progress_blocks_no_other_module() -> None:
    """A worker swapping in a new version exports its networks in a background thread; the
    serving version's requests go on meanwhile (they waited for it under one shared lock)."""
    import threading

    serving, incoming = _ranker(9), _ranker(10)
    features = _features(20, True, 5)
    predict(serving, features, fast=True)  # exported and cached
    release, entered = threading.Event(), threading.Event()

    def slow_export() -> tuple:
        entered.set()
        release.wait(30)
        raise RuntimeError("not this time")

    exporting = threading.Thread(
        target=onnx_forward.onnx_forward, args=(incoming, "shared", slow_export)
    )
    exporting.start()
    try:
        assert entered.wait(10)
        answered: list[np.ndarray] = []
        request = threading.Thread(
            target=lambda: answered.append(predict(serving, features, fast=True))
        )
        request.start()
        request.join(10)
        assert answered, "a request waited for another module's export"
        np.testing.assert_allclose(
            answered[0], _torch_logits(serving, features), rtol=1e-5, atol=2e-5
        )
    finally:
        release.set()
        exporting.join(10)
    assert onnx_forward._cache[incoming]["shared"] is None  # its failure recorded as before
