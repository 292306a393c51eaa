"""The OpenVINO runner against PyTorch: FP32 / bf16 / FP16 / INT8 Q/DQ artifacts, the precision
that really runs, dynamic shapes, the asynchronous stream, and the missing-package error."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from resnet_deploy.errors import MissingDependencyError, UsageError
from resnet_deploy.parity import compare, seeded_inputs, tolerances_for
from resnet_deploy.runtime import InputError, choose_backend, load_runner, openvino_available

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed "
                                    "(pip install 'resnet-deploy[openvino]')")
SIDE = 64
SHAPES = [(1, 3, 64, 64), (4, 3, 96, 96), (2, 3, 97, 131), (1, 3, 224, 224)]
CALIBRATION_SHAPES = [(4, 3, 64, 64), (2, 3, 97, 131), (4, 3, 96, 96)] * 2


def _cpu_caps() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _needs_bf16() -> None:
    if "BF16" not in _cpu_caps():
        pytest.skip("this CPU has no BF16 support (AVX512-BF16 or AMX), so OpenVINO cannot run bf16")


@pytest.fixture(scope="module")
def model():
    from resnet_deploy.models import create_model

    m, _ = create_model("18", weights="random", seed=0)
    return m.eval()


@pytest.fixture(scope="module")
def torch_ref(model):
    from resnet_deploy.runtime.torch_runner import TorchRunner

    return TorchRunner(model)


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    from resnet_deploy.export.dynamic import make_dynamic
    from resnet_deploy.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("ov") / "resnet18.onnx"
    export_onnx(make_dynamic(model), path, exporter="torchscript", sample_shape=(1, 3, SIDE, SIDE))
    return path


@pytest.fixture(scope="module")
def int8_path(onnx_path):
    """A Q/DQ INT8 artifact as the calibration step writes it: uint8 activations, int8 per-channel
    weights, calibrated on a few synthetic batches at the sizes the tests use (a model calibrated at
    64 px only clips the larger activations of 128 px inputs, on ONNX Runtime and OpenVINO alike)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter({"input": x} for x in seeded_inputs(CALIBRATION_SHAPES, seed=1))

        def get_next(self):
            return next(self._batches, None)

    out = onnx_path.with_name("resnet18.int8.onnxruntime.onnx")
    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return out


@pytest.fixture(scope="module")
def fp16_path(onnx_path):
    import warnings

    import onnx
    from onnxconverter_common import float16

    out = onnx_path.with_name("resnet18.fp16.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about values it clamps to fp16's range
        fp16 = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(fp16, str(out))
    return out


@pytest.fixture(scope="module")
def ov_fp32(onnx_path):
    if not openvino_available():
        pytest.skip("openvino is not installed")
    with load_runner(onnx_path, backend="openvino", threads=2) as runner:
        yield runner


# -- FP32: parity with PyTorch, and the precision is the one asked for --------------------------------
@needs_openvino
def test_fp32_matches_torch_at_several_shapes(torch_ref, ov_fp32):
    report = compare(torch_ref, ov_fp32, seeded_inputs(SHAPES, seed=3), precision="fp32")
    assert report.passed, report.table()
    assert [m.shape for m in report.results] == SHAPES
    assert ov_fp32.info.precision == "fp32"
    assert ov_fp32.info.details["inference_precision_hint"] == "f32"
    assert set(ov_fp32.info.details["compute_precisions"]) == {"f32"}
    assert not [k for k in ov_fp32.info.details["runtime_precisions"] if k.endswith(("bf16", "f16"))]
    assert report.candidate["precision"] == "fp32"  # recorded in the parity report


@needs_openvino
def test_bf16_fails_the_fp32_bar_so_the_fp32_test_has_teeth(onnx_path, torch_ref, ov_fp32):
    """The same check, run on bf16, fails: a bf16 slip in the FP32 runner would be caught."""
    _needs_bf16()
    import openvino as ov

    # OpenVINO's own default on this CPU is bf16 for an FP32 model ...
    default = ov.Core().compile_model(str(onnx_path), "CPU")
    assert default.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    # ... which the runner does not inherit (checked above), and which misses the FP32 bar:
    inputs = seeded_inputs(SHAPES[:3], seed=3)
    with load_runner(onnx_path, backend="openvino", precision="bf16", threads=2) as bf16:
        assert bf16.info.precision == "bf16"
        assert set(bf16.info.details["compute_precisions"]) == {"bf16"}
        strict = compare(torch_ref, bf16, inputs, tolerances=tolerances_for("fp32"))
        assert not strict.passed, strict.table()
        assert min(m.max_abs_rel for m in strict.results) > 10 * tolerances_for("fp32").max_abs_rel
        # ... while it does meet the bf16 tolerances.
        own = compare(torch_ref, bf16, inputs)
        assert own.precision == "bf16" and own.passed, own.table()
    fp32 = compare(torch_ref, ov_fp32, inputs, tolerances=tolerances_for("fp32"))
    assert fp32.passed, fp32.table()


@needs_openvino
def test_fp32_request_that_compiles_to_bf16_raises(onnx_path, monkeypatch):
    """If OpenVINO ignored the f32 hint (the default here is bf16), the runner refuses to run."""
    _needs_bf16()
    import openvino as ov

    from resnet_deploy.runtime.openvino_runner import PrecisionMismatchError

    real = ov.Core.compile_model

    def ignoring_hint(self, model, device, config=None):
        config = {k: v for k, v in (config or {}).items() if k != "INFERENCE_PRECISION_HINT"}
        return real(self, model, device, config)

    monkeypatch.setattr(ov.Core, "compile_model", ignoring_hint)
    with pytest.raises(PrecisionMismatchError, match="bf16") as err:
        load_runner(onnx_path, backend="openvino", precision="fp32")
    assert err.value.exit_code == 1


@needs_openvino
def test_fp16_artifact_computes_in_f32_and_meets_fp16_tolerances(fp16_path, torch_ref):
    with load_runner(fp16_path, backend="openvino") as runner:
        assert runner.info.details["artifact_kind"] == "fp16"
        assert runner.info.details["inference_precision_hint"] == "f32"
        assert runner.info.precision == "fp16"  # weights rounded to fp16 bound the error
        assert runner.outputs[0].name == "logits"
        report = compare(torch_ref, runner, seeded_inputs(SHAPES[:3], seed=4))
        assert report.precision == "fp16" and report.passed, report.table()
    # asking for fp16 (what the bench does for this file) is met by the artifact on any CPU
    with load_runner(fp16_path, backend="openvino", precision="fp16") as runner:
        assert runner.info.precision == "fp16"
        expected_hint = "f16" if "FP16" in _cpu_caps() else "f32"
        assert runner.info.details["inference_precision_hint"] == expected_hint


# -- INT8 Q/DQ ------------------------------------------------------------------------------------------
@needs_openvino
def test_int8_qdq_runs_as_int8_within_int8_tolerances(int8_path, torch_ref):
    with load_runner(int8_path, backend="openvino", threads=2) as runner:
        info = runner.info
        assert info.precision == "int8"
        assert info.details["artifact_kind"] == "int8"
        assert set(info.details["compute_precisions"]) <= {"u8", "i8"}
        assert info.details["runtime_precisions"].get("Convolution:u8", 0) + \
            info.details["runtime_precisions"].get("Convolution:i8", 0) == 20  # every conv of ResNet-18
        assert info.details["inference_precision_hint"] == "f32"  # the non-quantized rest stays f32
        report = compare(torch_ref, runner, seeded_inputs([(4, 3, SIDE, SIDE), (2, 3, 97, 131), (4, 3, 96, 96)], seed=5))
        assert report.precision == "int8" and report.passed, report.table()
        # it is not FP32 in disguise: the FP32 bar is out of reach
        strict = compare(torch_ref, runner, seeded_inputs([(4, 3, SIDE, SIDE)], seed=5),
                         tolerances=tolerances_for("fp32"))
        assert not strict.passed


@needs_openvino
def test_precision_requests_the_artifact_cannot_meet_are_refused(onnx_path, int8_path):
    with pytest.raises(UsageError, match="INT8"):
        load_runner(int8_path, backend="openvino", precision="fp32")
    with pytest.raises(UsageError, match="needs an INT8 Q/DQ artifact"):
        load_runner(onnx_path, backend="openvino", precision="int8")
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        load_runner(onnx_path, backend="openvino", precision="fp8")
    if "FP16" not in _cpu_caps():
        with pytest.raises(UsageError, match="needs a CPU with FP16"):
            load_runner(onnx_path, backend="openvino", precision="fp16")


# -- shapes, requests, options ---------------------------------------------------------------------------
@needs_openvino
def test_dynamic_shapes_compile_once(onnx_path, torch_ref, monkeypatch):
    import openvino as ov

    calls = []
    real = ov.Core.compile_model

    def counting(self, *args, **kwargs):
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ov.Core, "compile_model", counting)
    with load_runner(onnx_path, backend="openvino", threads=2) as runner:
        assert runner.input.shape == (None, 3, None, None)
        compiled = runner._compiled
        for shape in [(1, 3, 64, 64), (3, 3, 97, 131), (2, 3, 128, 64), (1, 3, 64, 64)]:
            x = seeded_inputs([shape], seed=6)[0]
            y = runner.infer(x)
            assert y.shape == (shape[0], 1000)
            np.testing.assert_allclose(y, torch_ref.infer(x), rtol=0, atol=1e-4 * np.abs(y).max())
        assert len(calls) == 1 and runner._compiled is compiled
        # the compiled model is still the dynamic one, not reshaped to the last call
        assert not runner._compiled.input(0).get_partial_shape().is_static


@needs_openvino
def test_infer_stream_keeps_order_and_equals_infer(ov_fp32, onnx_path):
    shapes = [(4, 3, 64, 64)] * 5 + [(1, 3, 64, 64), (2, 3, 97, 131), (3, 3, 64, 96)]
    batches = seeded_inputs(shapes, seed=7)
    with load_runner(onnx_path, backend="openvino", threads=2, hint="throughput", num_requests=3) as runner:
        streamed = list(runner.infer_stream(iter(batches)))
    assert [s.shape[0] for s in streamed] == [s[0] for s in shapes]
    for got, x in zip(streamed, batches):
        np.testing.assert_allclose(got, ov_fp32.infer(x), rtol=1e-5, atol=1e-5)


@needs_openvino
def test_infer_stream_validates_and_can_stop_early(ov_fp32):
    good = seeded_inputs([(2, 3, 64, 64)] * 3, seed=8)
    with pytest.raises(InputError, match="channels must be 3"):
        list(ov_fp32.infer_stream([good[0], np.zeros((2, 4, 64, 64), np.float32)]))
    stream = ov_fp32.infer_stream(good)
    first = next(stream)
    stream.close()  # waits for what is in flight, does not hang
    np.testing.assert_allclose(first, ov_fp32.infer(good[0]), rtol=1e-5, atol=1e-5)


@needs_openvino
def test_concurrent_infer_from_threads(ov_fp32):
    batches = seeded_inputs([(1, 3, 64, 64), (2, 3, 64, 96), (1, 3, 97, 131), (2, 3, 64, 64)], seed=9)
    serial = [ov_fp32.infer(b) for b in batches]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = ov_fp32.infer(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(serial):
        np.testing.assert_allclose(results[i], want, rtol=1e-5, atol=1e-5)


@needs_openvino
def test_threads_hint_streams_are_applied_and_recorded(onnx_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("resnet_deploy"), "propagate", True)  # the CLI turns it off
    with load_runner(onnx_path, backend="openvino", threads=2, hint="throughput", streams=2) as runner:
        d = runner.info.details
        assert (d["threads"], d["hint"], d["streams"]) == (2, "throughput", 2)
        assert runner.info.to_dict()["backend"] == "openvino"
    with load_runner(onnx_path, backend="openvino", threads=1, hint="latency") as runner:
        assert (runner.info.details["threads"], runner.info.details["streams"]) == (1, 1)
    # OpenVINO gives each stream at least one thread: what it really runs is recorded, and said
    with caplog.at_level("WARNING", logger="resnet_deploy.runtime.openvino_runner"):
        with load_runner(onnx_path, backend="openvino", threads=1, streams=2) as runner:
            assert runner.info.details["streams"] == 1
    assert "asked OpenVINO for 2 streams, it runs 1" in caplog.text
    with pytest.raises(UsageError, match="unknown performance hint 'fast'"):
        load_runner(onnx_path, backend="openvino", hint="fast")
    with pytest.raises(UsageError, match="streams"):
        load_runner(onnx_path, backend="openvino", streams=0)
    with pytest.raises(UsageError, match="NVIDIA"):
        load_runner(onnx_path, backend="openvino", device="cuda:0")


@needs_openvino
def test_input_validation_and_closed_runner(onnx_path):
    runner = load_runner(onnx_path, backend="openvino")
    with pytest.raises(InputError, match="dtype"):
        runner.infer(np.zeros((1, 3, 64, 64), np.float64))
    runner.close()
    with pytest.raises(UsageError, match="closed"):
        runner.infer(np.zeros((1, 3, 64, 64), np.float32))


@needs_openvino
def test_auto_picks_openvino_for_onnx_on_cpu(onnx_path):
    assert choose_backend(onnx_path) == "openvino"
    with load_runner(onnx_path) as runner:
        assert runner.info.backend == "openvino" and runner.info.precision == "fp32"


# -- openvino missing ------------------------------------------------------------------------------------
def test_missing_openvino_is_a_clear_usage_error(onnx_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(MissingDependencyError) as err:
        load_runner(onnx_path, backend="openvino")
    assert err.value.exit_code == 2 and err.value.package == "openvino"
    assert "the OpenVINO backend" in str(err.value) and "resnet-deploy[openvino]" in str(err.value)
    assert choose_backend(onnx_path) == "onnxruntime"  # auto falls back without it


def test_missing_openvino_via_the_cli_exits_2(onnx_path, monkeypatch, capsys):
    from resnet_deploy.cli.main import main

    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["check", str(onnx_path), "--backend", "openvino", "--variant", "18",
                 "--shapes", "1x3x64x64"]) == 2
    err = capsys.readouterr().err
    assert "error: the OpenVINO backend needs the 'openvino' package" in err and "pip install" in err


# -- the CLI with --backend openvino ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(90, 120), (131, 97), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@needs_openvino
def test_cli_check_with_openvino(onnx_path, capsys):
    from resnet_deploy.cli.main import main

    assert main(["check", str(onnx_path), "--backend", "openvino", "--variant", "18", "--seed", "0",
                 "--shapes", "1x3x64x64,2x3x97x131"]) == 0
    out = capsys.readouterr().out
    assert "backend: openvino (cpu, fp32)" in out and "PASSED" in out


@needs_openvino
def test_cli_infer_with_openvino_agrees_with_onnxruntime(onnx_path, images, capsys):
    import json

    from resnet_deploy.cli.main import main

    files = sorted(str(p) for p in images.glob("*.png"))
    tops = {}
    for backend in ("openvino", "onnxruntime"):
        assert main(["infer", "-m", str(onnx_path), "--backend", backend, "--json", "--top-k", "3", *files]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["backend"] == backend
        tops[backend] = [[k["index"] for k in r["top_k"]] for r in report["results"]]
    assert len(tops["openvino"]) == 3 and tops["openvino"] == tops["onnxruntime"]


@needs_openvino
def test_cli_embed_with_openvino_agrees_with_onnxruntime(model, images, tmp_path, capsys):
    from resnet_deploy.cli.main import main
    from resnet_deploy.export.dynamic import make_dynamic
    from resnet_deploy.export.onnx_export import export_onnx
    from resnet_deploy.models.heads import wrap_head

    emb = tmp_path / "resnet18-embedding.onnx"
    export_onnx(make_dynamic(wrap_head(model, "embedding")), emb, exporter="torchscript", output_name="embedding",
                sample_shape=(1, 3, SIDE, SIDE))
    rows = {}
    for backend in ("openvino", "onnxruntime"):
        out = tmp_path / f"{backend}.npy"
        assert main(["embed", "-m", str(emb), "--backend", backend, "-o", str(out), "--batch-size", "2",
                     str(images)]) == 0
        assert f"backend: {backend}" in capsys.readouterr().out
        rows[backend] = np.load(out)
    assert rows["openvino"].shape == (3, 512)
    np.testing.assert_allclose(rows["openvino"], rows["onnxruntime"], rtol=0,
                               atol=1e-4 * np.abs(rows["onnxruntime"]).max())
