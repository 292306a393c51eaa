"""The reference INT8 tools, run in their own virtual environments (they pin other onnx/onnxruntime
versions than the toolkit's), on the same FP32 ONNX and the same calibration images:

* ``modelopt``: NVIDIA ModelOpt ONNX PTQ (``modelopt.onnx.quantization.quantize``, INT8, its
  default calibration, ``high_precision_dtype="fp32"``: its FP16 default loses ~10 points on ONNX
  Runtime CPU);
* ``nncf-ov``: NNCF post-training quantization of the OpenVINO model read from the ONNX (its
  default ``performance`` preset), saved as OpenVINO IR;
* ``nncf-onnx``: NNCF's ONNX backend, saved as Q/DQ ONNX (for ONNX Runtime).

    /tmp/i13-modelopt/bin/python benchmarks/reference_quantizers.py modelopt --onnx m.onnx --calib c.npy --out m.mo.onnx
    /tmp/i13-nncf/bin/python benchmarks/reference_quantizers.py nncf-ov --onnx m.onnx --calib c.npy --out m.nncf.xml

``--calib`` is an ``N x 3 x H x W`` float32 array of preprocessed images (what
``benchmarks/int8_accuracy.py`` writes from the toolkit's own calibration source). The script
imports nothing from resnet_deploy.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _input_name(path: str) -> str:
    import onnx

    model = onnx.load(path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def modelopt(onnx_path: str, calib: np.ndarray, out: str, batch: int) -> None:
    from modelopt.onnx.quantization import quantize

    name = _input_name(onnx_path)
    shape = "x".join(str(d) for d in calib.shape[1:])
    quantize(onnx_path=onnx_path, quantize_mode="int8", calibration_data={name: calib},
             calibration_shapes=f"{name}:{batch}x{shape}", output_path=out, high_precision_dtype="fp32")


def nncf_ov(onnx_path: str, calib: np.ndarray, out: str, batch: int) -> None:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(onnx_path)
    batches = [calib[i:i + batch] for i in range(0, len(calib), batch)]
    q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))  # counts samples = batches
    ov.save_model(q, out)


def nncf_onnx(onnx_path: str, calib: np.ndarray, out: str, batch: int) -> None:
    import nncf
    import onnx

    model = onnx.load(onnx_path)
    name = _input_name(onnx_path)
    batches = [{name: calib[i:i + batch]} for i in range(0, len(calib), batch)]
    q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))  # counts samples = batches
    onnx.save_model(q, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tool", choices=("modelopt", "nncf-ov", "nncf-onnx"))
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    calib = np.ascontiguousarray(np.load(args.calib), dtype=np.float32)
    t0 = time.perf_counter()
    {"modelopt": modelopt, "nncf-ov": nncf_ov, "nncf-onnx": nncf_onnx}[args.tool](args.onnx, calib, args.out,
                                                                                 args.batch)
    print(f"{args.tool}: {len(calib)} images, {time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
