"""INT8 accuracy on real labelled data that is available offline: scikit-learn's bundled digits.

Random weights make parity numbers weak (every image lands in the same class), so this study
trains a ResNet-18 briefly on the 1797 8x8 digits, upsampled to 64x64 RGB PNGs, and reports FP32
and INT8 top-1 and the logit error against FP32 on a held-out test split, for each calibration
method (``auto`` included) and calibration-set size, for both Q/DQ flavours, on ONNX Runtime and
OpenVINO:

* ``--setting hard`` (default): 4 training epochs, and at test time (test split *and* the
  calibration pool, which stands for the deployment data) seeded affine jitter (rotation +-15
  degrees, shift +-6 px, scale 0.85-1.15) and Gaussian pixel noise (sigma 30 of 255). FP32 stays
  below 95 %, so INT8 differences show. ``--setting easy``: 6 epochs on clean images (99 %+);
* calibration images come from the training split (a folder of PNGs, as a user would pass it);
  the test split is never calibrated on; ``--holdout 16`` of the pool are the stage's held-out
  images (what ``auto``, sensitivity and parity use), on top of the ``--calib-size`` images;
* rows per method and size: the onnxruntime flavour (u8s8) and the tensorrt flavour (s8s8) on
  ONNX Runtime CPU and on OpenVINO; the logit error is the mean |INT8 logit - FP32 logit| over the
  test split (FP32 = the FP32 ONNX on ONNX Runtime), beside top-1;
* the reference tools on the same FP32 ONNX and the same calibration images, each run in its own
  virtual environment by ``benchmarks/reference_quantizers.py``: NVIDIA ModelOpt ONNX PTQ
  (``--modelopt-python``) and NNCF (``--nncf-python``: the OpenVINO model for OpenVINO, the ONNX
  backend for ONNX Runtime); skipped when the interpreter is missing;
* mixed precision: ``auto`` at the largest size with ``--keep-float 1,2,4`` layers out of INT8.

    python benchmarks/int8_accuracy.py                  # the harder study (~5 min training + ~7 min, 2 busy cores)
    python benchmarks/int8_accuracy.py --sizes 32 --methods minmax --epochs 1 --keep-float ""   # smoke

The fine-tuned weights, the export and the PNGs are cached in ``--work-dir``; pass ``--retrain``
to train again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 64


def digits_pictures(size: int = SIZE):
    """(N, size, size, 3) uint8 pictures and (N,) labels: the 8x8 digits (0..16), scaled to 0..255
    and upsampled with bilinear interpolation."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    pics = []
    for img in d.images:
        small = Image.fromarray(np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
        big = small.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
        pics.append(np.asarray(big))
    return np.stack(pics), d.target.astype(np.int64)


def jitter(pics: np.ndarray, seed: int, noise: float = 30.0, degrees: float = 15.0, shift: int = 6,
           scale: tuple[float, float] = (0.85, 1.15)) -> np.ndarray:
    """Seeded test-time corruption: a random affine warp per picture (rotation, shift, scale; the
    background fills in), then Gaussian pixel noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for pic in pics:
        img = Image.fromarray(pic)
        angle = rng.uniform(-degrees, degrees)
        s = rng.uniform(*scale)
        dx, dy = rng.integers(-shift, shift + 1, size=2)
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, translate=(int(dx), int(dy)), fillcolor=(0, 0, 0))
        w, h = img.size
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (w, h))
        canvas.paste(img, ((w - img.size[0]) // 2, (h - img.size[1]) // 2))
        arr = np.asarray(canvas, dtype=np.float32) + rng.normal(0, noise, (h, w, 1))
        out.append(np.clip(arr, 0, 255).astype(np.uint8))
    return np.stack(out)


def split(labels: np.ndarray, seed: int = 0):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=0.4, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def prepare(pics: np.ndarray, prep) -> np.ndarray:
    from resnet_deploy.models.preprocessing import preprocess_many

    return preprocess_many(list(pics), prep, workers=2)


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, log: logging.Logger):
    import torch
    from torch import nn

    from resnet_deploy.models import create_model

    torch.manual_seed(seed)
    model, _ = create_model("18", num_classes=10, seed=seed)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps, pct_start=0.25)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        t0, total, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for b in torch.randperm(len(xt), generator=g).split(64):
            xb = xt[b]
            # augmentation: random shifts of up to 6 px (pad with the background value, crop)
            pad = nn.functional.pad(xb, (6, 6, 6, 6), mode="replicate")
            dx, dy = torch.randint(0, 13, (2,), generator=g).tolist()
            xb = pad[:, :, dy:dy + SIZE, dx:dx + SIZE]
            out = model(xb)
            loss = loss_fn(out, yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += len(b)
            correct += int((out.argmax(1) == yt[b]).sum())
            loss_sum += float(loss) * len(b)
        log.info("epoch %d/%d: loss %.3f, train top-1 %.3f (%.0fs)", epoch + 1, epochs, loss_sum / total,
                 correct / total, time.perf_counter() - t0)
    return model.eval()


def logits_of(runner, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(runner.infer(np.ascontiguousarray(x[i:i + batch])))
                           for i in range(0, len(x), batch)]).astype(np.float64)


def top1(runner, x: np.ndarray, y: np.ndarray, batch: int = 64) -> tuple[float, np.ndarray]:
    p = np.argmax(logits_of(runner, x, batch), axis=1)
    return float(np.mean(p == y)), p


def evaluate(path: Path, backend: str, x: np.ndarray, y: np.ndarray, ref: np.ndarray) -> dict:
    """top-1 and logit error against FP32 of one INT8 file on one backend (an error is recorded)."""
    from resnet_deploy.runtime import load_runner

    try:
        with load_runner(path, backend=backend) as r:
            z = logits_of(r, x)
    except Exception as exc:  # noqa: BLE001 - a missing cell is reported, not fatal
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return {"top1": float(np.mean(z.argmax(1) == y)), "err": float(np.abs(z - ref).mean()),
            "agree": float(np.mean(z.argmax(1) == ref.argmax(1)))}


def reference_tool(python: str | None, tool: str, fp32: Path, calib: Path, out: Path, batch: int,
                   log: logging.Logger) -> Path | None:
    import subprocess

    if not python or not Path(python).is_file():
        return None
    if out.is_file():
        return out
    script = Path(__file__).with_name("reference_quantizers.py")
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(script), tool, "--onnx", str(fp32), "--calib", str(calib), "--out", str(out),
                           "--batch", str(batch)], capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        log.warning("%s failed: %s", tool, (proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return None
    log.info("%s: %.0fs", tool, time.perf_counter() - t0)
    return out


def _cell(r: dict | None) -> str:
    if not r:
        return "n/a"
    if "error" in r:
        return "error"
    return f"{r['top1'] * 100:.2f}% / {r['err']:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=("hard", "easy"), default="hard")
    ap.add_argument("--work-dir", default=None, help="default /tmp/resnet-deploy-int8-accuracy[-hard]")
    ap.add_argument("--methods", default="auto,minmax,entropy,percentile,mse")
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--epochs", type=int, default=None, help="default 4 (hard) or 6 (easy)")
    ap.add_argument("--batch-size", type=int, default=16, help="calibration batch size")
    ap.add_argument("--holdout", type=int, default=16)
    ap.add_argument("--keep-float", default="1,2,4", help="mixed-precision rows (auto, largest size); '' for none")
    ap.add_argument("--modelopt-python", default="/tmp/i13-modelopt/bin/python")
    ap.add_argument("--nncf-python", default="/tmp/i13-nncf/bin/python")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    args = ap.parse_args(argv)
    hard = args.setting == "hard"
    epochs = args.epochs if args.epochs is not None else (4 if hard else 6)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s] %(message)s", stream=sys.stderr)
    for noisy in ("torch.onnx", "onnxscript", "torch._dynamo", "torch.export", "onnxruntime",
                  "resnet_deploy.calibration.sources"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    log = logging.getLogger("int8_accuracy")
    t_start = time.perf_counter()

    import torch
    from PIL import Image

    from resnet_deploy.calibration import CalibrationConfig, make_source, run_int8_stage
    from resnet_deploy.export import ExportConfig, export_model, make_dynamic
    from resnet_deploy.models import Preprocessing, create_model
    from resnet_deploy.runtime import openvino_available
    from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from resnet_deploy.runtime.torch_runner import TorchRunner

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(args.work_dir or os.environ.get("RESNET_DEPLOY_BENCH_DIR")
                or f"/tmp/resnet-deploy-int8-accuracy{'-hard' if hard else ''}")
    work.mkdir(parents=True, exist_ok=True)
    prep = Preprocessing(resize_size=SIZE, crop_size=SIZE)
    pics, labels = digits_pictures()
    train_idx, test_idx = split(labels, args.seed)
    x_train = prepare(pics[train_idx], prep)  # training sees clean pictures
    seen = jitter(pics, args.seed + 1) if hard else pics  # what the deployed model sees
    x_test, y_train, y_test = prepare(seen[test_idx], prep), labels[train_idx], labels[test_idx]
    log.info("digits: %d train (calibration pool), %d test images at %dx%d, setting %s", len(train_idx),
             len(test_idx), SIZE, SIZE, args.setting)

    # the calibration pool as a user would pass it: a folder of (deployment-like) images
    calib_dir = work / "calib_png"
    if not (calib_dir / "done").is_file():
        for i in train_idx:
            sub = calib_dir / str(labels[i])
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(seen[i]).save(sub / f"{i:04d}.png")
        (calib_dir / "done").write_text("ok")

    ckpt = work / "digits_resnet18.pth"
    t0 = time.perf_counter()
    if args.retrain or not ckpt.is_file():
        model = train(x_train, y_train, epochs, args.seed, log)
        torch.save({"state_dict": model.state_dict(), "preprocessing": prep.to_dict()}, ckpt)
        for old in (work / "export").glob("*"):
            old.unlink()
    train_s = time.perf_counter() - t0
    model, winfo = create_model("18", weights=ckpt)
    module = make_dynamic(model).eval()
    export_dir = work / "export"
    fp32 = export_dir / "resnet18.onnx"
    if not fp32.is_file():
        export_model(ExportConfig(variant="18", weights=str(ckpt), output_dir=export_dir,
                                  check_shapes=((4, 3, SIZE, SIZE), (2, 3, 96, 96))))

    fp32_torch, _ = top1(TorchRunner(module), x_test, y_test)
    with OnnxRuntimeRunner(fp32) as r:
        ref = logits_of(r, x_test)
    fp32_ort = float(np.mean(ref.argmax(1) == y_test))
    log.info("FP32 top-1: PyTorch %.4f, ONNX Runtime %.4f", fp32_torch, fp32_ort)
    backends = ["onnxruntime"] + (["openvino"] if openvino_available() else [])

    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for n in sizes:
        size_dir = work / "int8" / f"n{n}"
        for method in methods:
            out = size_dir / method
            t1 = time.perf_counter()
            res = run_int8_stage(fp32, None, out, "resnet18", CalibrationConfig(
                calib_data=str(calib_dir), method=method, calib_size=n, target="both", holdout=args.holdout,
                batch_size=args.batch_size, seed=args.seed))
            row = {"tool": "resnet-deploy", "method": method, "chosen": res.calibration.get("chosen_per_target"),
                   "calib_images": res.calibration["num_images"], "stage_s": round(time.perf_counter() - t1, 1),
                   "selection": res.calibration.get("selection", {}).get("scores")}
            for target, path in res.artifacts.items():
                for b in backends:
                    row[f"{target}@{b}"] = evaluate(path, b, x_test, y_test, ref)
            rows.append(row)
            log.info("%s", {k: v for k, v in row.items() if k != "selection"})
        # the reference tools on the very same calibration images
        src = make_source(str(calib_dir), prep, batch_size=args.batch_size, size=n, seed=args.seed,
                          holdout=args.holdout)
        calib_npy = size_dir / "calib.npy"
        size_dir.mkdir(parents=True, exist_ok=True)
        np.save(calib_npy, np.concatenate(list(src)))
        mo = reference_tool(args.modelopt_python, "modelopt", fp32, calib_npy, size_dir / "modelopt.onnx",
                            args.batch_size, log)
        if mo is not None:
            rows.append({"tool": "ModelOpt ONNX PTQ", "method": "default", "calib_images": src.num_images,
                         **{f"modelopt@{b}": evaluate(mo, b, x_test, y_test, ref) for b in backends}})
        nov = reference_tool(args.nncf_python, "nncf-ov", fp32, calib_npy, size_dir / "nncf.xml", args.batch_size,
                             log)
        nox = reference_tool(args.nncf_python, "nncf-onnx", fp32, calib_npy, size_dir / "nncf.onnx",
                             args.batch_size, log)
        if nov is not None or nox is not None:
            row = {"tool": "NNCF", "method": "default", "calib_images": src.num_images}
            if nox is not None:
                row["nncf@onnxruntime"] = evaluate(nox, "onnxruntime", x_test, y_test, ref)
            if nov is not None and "openvino" in backends:
                row["nncf@openvino"] = evaluate(nov, "openvino", x_test, y_test, ref)
            rows.append(row)
        log.info("size %d done", n)

    mixed = []
    for k in [int(v) for v in args.keep_float.split(",") if v.strip()]:
        out = work / "int8" / f"n{sizes[-1]}" / "auto"  # reuses the auto calibration cache
        res = run_int8_stage(fp32, None, out, f"resnet18.keep{k}", CalibrationConfig(
            calib_data=str(calib_dir), method="auto", calib_size=sizes[-1], target="both", holdout=args.holdout,
            batch_size=args.batch_size, seed=args.seed, keep_float=k,
            cache=str(out / "resnet18.int8.calib.json")))
        row = {"keep_float": k, "kept": {t: m.kept for t, m in res.mixed.items()}}
        for target, path in res.artifacts.items():
            for b in backends:
                row[f"{target}@{b}"] = evaluate(path, b, x_test, y_test, ref)
        mixed.append(row)
        log.info("%s", row)

    title = ("ResNet-18 trained %d epochs on sklearn digits (%d train / %d test, %dx%d RGB)%s; FP32 top-1: PyTorch "
             "%.2f%%, ONNX Runtime %.2f%%. Cells: top-1 / mean |logit - FP32 logit| on the test split (never "
             "calibrated on)." % (epochs, len(train_idx), len(test_idx), SIZE, SIZE,
                                  ", test-time affine jitter + noise (sigma 30)" if hard else "", fp32_torch * 100,
                                  fp32_ort * 100))
    lines = [title, "",
             "| tool / method | calib images | u8s8 on ORT | u8s8 on OpenVINO | s8s8 (TensorRT flavour) on ORT | "
             "s8s8 on OpenVINO |", "|---|---:|---:|---:|---:|---:|"]
    worst = 0.0
    for r in rows:
        if r["tool"] == "resnet-deploy":
            name = r["method"] + (" (chose " + " / ".join(r["chosen"][t] for t in ("onnxruntime", "tensorrt")
                                                         if t in r["chosen"]) + ")" if r["method"] == "auto" else "")
            cells = [r.get("onnxruntime@onnxruntime"), r.get("onnxruntime@openvino"), r.get("tensorrt@onnxruntime"),
                     r.get("tensorrt@openvino")]
            if r["method"] == "auto":
                for c in cells:
                    if c and "top1" in c:
                        worst = min(worst, (c["top1"] - fp32_ort) * 100)
        elif r["tool"] == "NNCF":
            name = "**NNCF** (ONNX backend on ORT, OpenVINO model on OpenVINO)"
            cells = [r.get("nncf@onnxruntime"), r.get("nncf@openvino"), None, None]
        else:
            name = "**ModelOpt** ONNX PTQ (fp32 high precision; its placement is the s8s8 kind)"
            cells = [None, None, r.get("modelopt@onnxruntime"), r.get("modelopt@openvino")]
        lines.append(f"| {name} | {r['calib_images']} | " + " | ".join(_cell(c) for c in cells) + " |")
    if mixed:
        lines += ["", f"Mixed precision (auto, {sizes[-1]} images): the K most sensitive layers out of INT8 "
                  "(float in the onnxruntime flavour, FP16 in the tensorrt flavour).", "",
                  "| layers kept | u8s8 on ORT | u8s8 on OpenVINO | s8s8 on ORT | s8s8 on OpenVINO "
                  "| kept (u8s8 / s8s8) |",
                  "|---:|---:|---:|---:|---:|---|"]
        for m in mixed:
            lines.append(f"| {m['keep_float']} | " + " | ".join(_cell(m.get(k)) for k in (
                "onnxruntime@onnxruntime", "onnxruntime@openvino", "tensorrt@onnxruntime", "tensorrt@openvino"))
                + f" | {', '.join(m['kept'].get('onnxruntime', []))} / {', '.join(m['kept'].get('tensorrt', []))} |")
    total_s = time.perf_counter() - t_start
    lines += ["", "worst default (auto) INT8 top-1 difference from FP32 (every size, flavour and backend): "
                  f"{worst:+.2f} points "
                  f"({'PASS' if worst >= -0.25 else 'FAIL'}: target within 0.25 points); training {train_s:.0f}s "
                  f"(0 = cached), whole study {total_s:.0f}s"]
    text = "\n".join(lines)
    print(text)
    (work / "results.json").write_text(json.dumps({"setting": args.setting, "epochs": epochs, "fp32_torch": fp32_torch,
                                                   "fp32_ort": fp32_ort, "rows": rows, "mixed": mixed,
                                                   "total_s": total_s}, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if worst >= -0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
