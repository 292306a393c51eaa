"""``resnet-deploy infer --model ARTIFACT IMAGE...``: top-k classes with names and probabilities.

Images are preprocessed with the record that travels with the artifact. Class names come from the
packaged ImageNet list when the head has 1000 classes, or from ``--labels FILE`` (one per line).
An unreadable image is reported and the others still run (exit 2 at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import options
from ..errors import UsageError
from ..runtime import BACKEND_CHOICES, runner_options

#: A labels file larger than this is not a list of class names.
MAX_LABELS_BYTES = 16 << 20


@dataclass
class Prediction:
    index: int
    probability: float
    label: str | None = None


@dataclass
class ImageResult:
    image: str
    top_k: list[Prediction] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"image": self.image}
        if self.error is not None:
            d["error"] = self.error
        else:
            d["top_k"] = [asdict(p) for p in self.top_k]
        return d


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row max is subtracted first)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, k: int, labels: Sequence[str] | None = None) -> list[list[Prediction]]:
    """Per row, the ``k`` most probable classes (ties: the lower index first)."""
    probs = softmax(logits)
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[Prediction(int(i), float(p[i]), labels[i] if labels is not None else None) for i in row]
            for p, row in zip(probs, order)]


def read_labels(labels_file: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line (blank lines ignored), from a UTF-8 text file."""
    from .._io import open_regular

    p = Path(labels_file)
    with open_regular(p, "labels file") as f:
        data = f.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        raise UsageError(f"labels file '{p}' is larger than {MAX_LABELS_BYTES >> 20} MiB; expected one class name "
                         "per line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"labels file '{p}' is not UTF-8 text (byte {exc.start}); expected one class name per "
                         "line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_labels(num_classes: int, labels_file: str | None = None,
                 names: Sequence[str] | None = None) -> list[str] | None:
    """Names for ``num_classes`` outputs: ``names`` (already read) or ``--labels FILE``, else
    ImageNet's for 1000, else None."""
    if labels_file or names is not None:
        names = list(names) if names is not None else read_labels(labels_file)  # type: ignore[arg-type]
        if len(names) != num_classes:
            raise UsageError(f"labels file '{labels_file}' has {len(names)} names but the model has {num_classes} "
                             "classes")
        return names
    if num_classes == 1000:
        from ..data import imagenet_classes

        return imagenet_classes()
    return None


def predict(model: Any, images: Sequence[str], k: int, labels_file: str | None = None,
            names: Sequence[str] | None = None) -> list[ImageResult]:
    """Run ``images`` through an :class:`~resnet_deploy.pipelines.ImageModel`; failures become results
    with ``error`` set, in input order. The model must output (N, classes) scores."""
    positions: dict[str, deque[int]] = defaultdict(deque)
    for i, path in enumerate(images):
        positions[path].append(i)  # the same file twice: both occurrences succeed or fail alike
    results: dict[int, ImageResult] = {}
    labels: list[str] | None = None

    def on_error(path: str, exc: Exception) -> None:
        results[positions[path].popleft()] = ImageResult(path, error=str(exc))

    for n, (chunk, logits) in enumerate(model.iter_run(list(images), on_error=on_error)):
        if logits.ndim != 2:
            raise UsageError(f"the model outputs shape {'x'.join(map(str, logits.shape))} per batch; infer needs "
                             "(N, classes) scores")
        if n == 0:
            labels = class_labels(logits.shape[1], labels_file, names)
        for path, row in zip(chunk, top_k(logits, k, labels)):
            results[positions[path].popleft()] = ImageResult(path, top_k=row)
    return [results[i] for i in range(len(images))]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("infer", parents=[common], help="classify images: top-k classes and probabilities",
                       description="Classify images with an artifact (or a variant with --weights): top-k class "
                                   "indices, ImageNet names for 1000-class heads, softmax probabilities.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, BMP, TIFF, GIF)")
    p.add_argument("--model", "-m", required=True, metavar="ARTIFACT",
                   help="ONNX file, TensorRT engine, or a variant name (torch backend, with --weights)")
    p.add_argument("--weights", default=None, help="weights for a variant name: imagenet[:TAG], random, or a file")
    p.add_argument("--top-k", type=options.positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--labels", default=None, metavar="FILE", help="class names, one per line (custom heads)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="default auto")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda for engines, else cpu)")
    p.add_argument("--threads", type=options.threads, default=None, help="CPU inference threads")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default=None,
                   help="what a backend with a choice runs (OpenVINO: fp32 unless bf16 is asked for)")
    p.add_argument("--batch-size", type=options.batch_size, default=16, help="images per batch (default 16)")
    p.add_argument("--workers", type=options.positive_int, default=None, help="decode threads (default: min(8, CPUs))")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipelines.embedder import ImageModel, default_device

    if args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    names = read_labels(args.labels) if args.labels else None  # a bad file fails before the model loads
    device = default_device(args.model, args.device)
    kwargs: dict[str, Any] = runner_options(args.model, args.backend, device, threads=args.threads,
                                            precision=args.precision)
    if args.weights is not None:
        if os.path.isfile(args.model):
            raise UsageError(f"--weights applies to a variant name; '{args.model}' is a file with its own weights")
        kwargs["weights"] = args.weights
    with ImageModel(args.model, backend=args.backend, device=device,
                    batch_size=args.batch_size, workers=args.workers, **kwargs) as model:
        if model.head == "embedding":
            raise UsageError(f"'{args.model}' outputs embeddings (head 'embedding'), not class scores; use "
                             "'resnet-deploy embed'")
        results = predict(model, args.images, args.top_k, args.labels, names)
        info = model.runner.info
    failed = [r for r in results if r.error]
    for r in failed:  # errors go to stderr (and into the JSON), results to stdout
        print(f"error: {r.error}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": str(args.model), "backend": info.backend, "device": info.device,
                          "precision": info.precision, "results": [r.to_dict() for r in results]}, indent=2))
    else:
        print(f"backend: {info.backend} ({info.device}, {info.precision})  model: {args.model}")
        for r in results:
            if r.error:
                continue
            print(r.image)
            for rank, pred in enumerate(r.top_k, 1):
                name = pred.label if pred.label is not None else f"class {pred.index}"
                print(f"  {rank:>2}. {pred.index:>5}  {pred.probability:8.4f}  {name}")
    return 2 if failed else 0
