from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from driftline.inference.errors import ModelError, ModelNotReady
from driftline.inference.manifest import Manifest
from driftline.inference.model import CPU, CUDA, OnnxModel, provider_list
from driftline.inference.registry import ModelRegistry, write_version
from driftline.streams.settings import EXAMPLE_MODELS

FRAUD = EXAMPLE_MODELS / "fraud" / "1"
HAS_CUDA = CUDA in ort.get_available_providers()


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "fraud" / "1"
    shutil.copytree(FRAUD, target)
    return target


def test_hash_mismatch_is_refused(copy: Path) -> None:
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    model = OnnxModel(copy, providers="cpu")
    with pytest.raises(ModelError, match="does not match the manifest"):
        model.load()
    assert not model.ready


def test_corrupt_file_with_matching_hash_is_refused(tmp_path: Path) -> None:
    manifest = json.loads((FRAUD / "manifest.json").read_text())
    manifest["version"] = "9"
    path = write_version(tmp_path, b"not an onnx model", manifest)
    with pytest.raises(ModelError, match="cannot load"):
        OnnxModel(path, providers="cpu").load()


def test_inputs_that_do_not_match_the_manifest_are_refused(tmp_path: Path) -> None:
    manifest = json.loads((FRAUD / "manifest.json").read_text())
    manifest["version"] = "2"
    manifest["features"] = manifest["features"][:-1]  # one categorical fewer: width differs
    path = write_version(tmp_path, (FRAUD / "model.onnx").read_bytes(), manifest)
    with pytest.raises(ModelError, match="columns but the manifest"):
        OnnxModel(path, providers="cpu").load()


def test_versions_are_immutable(tmp_path: Path) -> None:
    manifest = json.loads((FRAUD / "manifest.json").read_text())
    write_version(tmp_path, (FRAUD / "model.onnx").read_bytes(), manifest)
    with pytest.raises(ModelError, match="immutable"):
        write_version(tmp_path, (FRAUD / "model.onnx").read_bytes(), manifest)


def test_manifest_errors_name_the_field() -> None:
    with pytest.raises(ModelError, match="'request'"):
        Manifest.from_dict({"name": "x", "version": "1", "task": "regression", "sha256": "0",
                            "features": []})
    with pytest.raises(ModelError, match="task must be"):
        Manifest.from_dict({"task": "clustering"})


def test_predict_needs_load() -> None:
    with pytest.raises(ModelNotReady):
        OnnxModel(FRAUD).predict(np.zeros((1, 26), np.float32))


def test_scores_are_probabilities_and_batch_equals_rows(fraud_model: OnnxModel, rng) -> None:  # type: ignore[no-untyped-def]
    x = rng.random((64, fraud_model.manifest.profile.width)).astype(np.float32)
    batch = fraud_model.predict(x)
    rows = np.concatenate([fraud_model.predict(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(batch, rows, rtol=1e-5)
    assert ((batch >= 0) & (batch <= 1)).all()
    labels = fraud_model.labels(batch)
    assert labels == ["fraud" if s >= 0.5 else "legit" for s in batch]


def test_regressor_has_no_label(housing_model: OnnxModel) -> None:
    scores = housing_model.predict(np.array([[3, 100.0, 10.0]], np.float32))
    assert scores.shape == (1,) and 200_000 < scores[0] < 500_000
    assert housing_model.labels(scores) == [None]


def test_registry_picks_latest_numerically(tmp_path: Path) -> None:
    manifest = json.loads((FRAUD / "manifest.json").read_text())
    for v in ("2", "10", "9"):
        write_version(tmp_path, (FRAUD / "model.onnx").read_bytes(), {**manifest, "version": v})
    reg = ModelRegistry(tmp_path)
    assert reg.versions("fraud") == ["2", "9", "10"]
    assert reg.path("fraud").name == "10"
    with pytest.raises(ModelError, match="no version"):
        reg.path("fraud", "3")


def test_provider_selection_without_cuda() -> None:
    assert provider_list("auto", [CPU]) == [CPU]
    assert provider_list("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert provider_list("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(ModelError, match="no CUDA provider"):
        provider_list("cuda", [CPU])


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA; the CPU fallback path is not taken")
def test_auto_falls_back_to_cpu_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model = OnnxModel(FRAUD, providers="auto")
    with caplog.at_level("INFO", logger="driftline.inference.model"):
        model.load()
    assert model.active_provider == CPU
    assert "CPUExecutionProvider" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA provider in this ONNX Runtime (install driftline[gpu])")
def test_cuda_is_used_when_present() -> None:
    model = OnnxModel(FRAUD, providers="cuda")
    model.load()
    assert model.active_provider == CUDA


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA; --require-gpu would start")
def test_require_gpu_stops_the_worker_at_start_with_one_line() -> None:
    import subprocess
    import sys

    from driftline.streams.settings import REPO_ROOT

    done = subprocess.run([sys.executable, "-m", "driftline.streams.cli", "worker", "--require-gpu",
                           "--broker", "127.0.0.1:9"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA provider" in done.stderr
    assert "DRIFTLINE_REQUIRE_GPU" in done.stderr


def warmup_failing_onnx(width: int) -> bytes:
    """A graph that loads as a fraud model (input ``features`` of ``width`` columns, output ``probabilities``)
    but fails when run on one row: it reshapes the batch to rows of ``width + 1``, which only some batch sizes
    allow. ONNX Runtime cannot know that before it runs.
    """
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, None])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, width + 1])
    graph = helper.make_graph([helper.make_node("Reshape", ["features", "shape"], ["probabilities"])],
                              "fails_at_run_time", [x], [y], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def register_warmup_failing(root: Path, version: str = "6") -> Path:
    """fraud v``version``: the fraud manifest (so the same inputs as v1) on a graph that fails its warm-up."""
    manifest = json.loads((FRAUD / "manifest.json").read_text())
    return write_version(root, warmup_failing_onnx(Manifest.read(FRAUD).profile.width),
                         {**manifest, "version": version})


def test_a_version_that_fails_its_warm_up_is_refused_not_a_crash(tmp_path: Path) -> None:
    model = OnnxModel(register_warmup_failing(tmp_path), providers="cpu")
    with pytest.raises(ModelError, match="warm-up run on CPUExecutionProvider failed"):
        model.load()
    assert not model.ready and model.active_provider is None


def test_a_deployment_that_fails_warm_up_is_refused_and_the_champion_keeps_serving(
    tmp_path: Path, catalog  # type: ignore[no-untyped-def]
) -> None:
    from driftline.streams.app.rollout import ModelLoader, load_failed_alert, refused_version
    from driftline.streams.core.events import encode_event, read_event
    from driftline.streams.core.pipeline import ServedModel

    shutil.copytree(FRAUD, tmp_path / "fraud" / "1")
    register_warmup_failing(tmp_path)
    loader = ModelLoader(ModelRegistry(tmp_path), providers="cpu", intra_op_threads=1)
    served = ServedModel(loader.load("fraud", "1"), catalog, max_message_bytes=8192)
    before = served.deployment
    for dep in (before.promote("6", 1), before.start_canary("6", 0.2, 1), before.add_shadow("6", 1)):
        with pytest.raises(ModelError, match="warm-up") as refused:
            loader.prepare(dep, served.versions)  # what the worker's apply() turns into model_load_failed
        assert refused_version(refused.value, dep) == "6"  # the version that failed, a shadow's too
        alert = load_failed_alert("fraud", "6", str(refused.value), 1)
        assert alert.kind == "model_load_failed" and alert.severity == "critical"
        assert "warm-up" in alert.message and "CPUExecutionProvider" in alert.message
        assert read_event(catalog, encode_event(catalog, alert)) == alert
    assert served.deployment == before and served.model.ready
    assert served.model.predict(np.zeros((3, Manifest.read(FRAUD).profile.width), np.float32)).shape == (3,)


def test_model_commands_check_with_the_workers_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from driftline.inference.deployment import Deployment
    from driftline.streams.cli.main import build_parser
    from driftline.streams.cli.model import check_servable

    shutil.copytree(FRAUD, tmp_path / "fraud" / "1")
    register_warmup_failing(tmp_path)
    registry, current = ModelRegistry(tmp_path), Deployment("fraud", "1")
    with pytest.raises(ModelError, match="warm-up"):
        check_servable(registry, current, "6", "cpu")
    check_servable(registry, current, "1", "cpu")
    if not HAS_CUDA:  # the flag reaches the load: here CUDA is not there, as a GPU worker would need it
        with pytest.raises(ModelError, match="no CUDA provider"):
            check_servable(registry, current, "1", "cuda")
    for command in (["promote", "fraud", "2"], ["canary", "fraud", "2"], ["shadow", "fraud", "2"],
                    ["ab", "fraud", "1", "2"], ["rollback", "fraud"], ["register", "f.onnx", "--name", "fraud",
                                                                        "--version", "7"]):
        assert build_parser().parse_args(["model", *command, "--providers", "cuda"]).providers == "cuda"
        assert build_parser().parse_args(["model", *command]).providers is None  # then DRIFTLINE_PROVIDERS
    with pytest.raises(SystemExit):
        build_parser().parse_args(["model", "promote", "fraud", "2", "--providers", "tpu"])


def test_register_refuses_a_version_that_fails_its_warm_up(tmp_path: Path) -> None:
    from driftline.streams.cli.main import main

    onnx_file = tmp_path / "bad.onnx"
    onnx_file.write_bytes(warmup_failing_onnx(Manifest.read(FRAUD).profile.width))
    code = main(["model", "register", str(onnx_file), "--name", "fraud", "--version", "2", "--like", str(FRAUD),
                 "--model-dir", str(tmp_path / "models"), "--providers", "cpu"])
    assert code == 1 and ModelRegistry(tmp_path / "models").versions("fraud") == []


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA; the version would run on it")
def test_a_deployment_a_require_gpu_worker_cannot_run_is_refused_not_a_crash(tmp_path: Path) -> None:
    from driftline.inference.deployment import Deployment
    from driftline.streams.app.rollout import ModelLoader

    manifest = json.loads((FRAUD / "manifest.json").read_text())
    write_version(tmp_path, (FRAUD / "model.onnx").read_bytes(), {**manifest, "version": "2"})
    loader = ModelLoader(ModelRegistry(tmp_path), providers="auto", intra_op_threads=1, require_gpu=True)
    with pytest.raises(ModelError, match="require_gpu"):  # a ConfigError before: the worker stopped at start
        loader.prepare(Deployment("fraud", "1").promote("2", 1), {})
