"""Does decoding keep up with inference? ``Embedder.iter_embed`` over JPEG files vs the runner alone.

Both paths use the same runner, batch size and number of images:

* ``runner``: ``runner.infer_stream`` over preprocessed batches already in memory (what ``bench``
  measures: inference only, host copies included);
* ``embed``: ``Embedder.iter_embed`` over JPEG files on disk (decode, resize, crop, normalize in the
  thread pool, overlapping with inference), i.e. what ``resnet-deploy embed`` does minus the file write.

The target is ``embed / runner >= 0.8``. Images are written once into ``--images`` (ImageNet-like
sizes, 500x375 and 375x500 JPEGs cut from scikit-image's sample photos) unless the folder has some.

    python benchmarks/embed_throughput.py --model exports/resnet50-embedding/resnet50-embedding.onnx \
        --backend openvino --batch-size 32 --images /tmp/embed-bench --num-images 512
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    sources = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)])
        size = (500, 375) if i % 3 else (375, 500)
        # a random crop so that every file differs
        w, h = src.size
        box_w, box_h = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - box_w + 1)), int(rng.integers(0, h - box_h + 1))
        img = src.crop((x0, y0, x0 + box_w, y0 + box_h)).resize(size)
        p = folder / f"img{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="inference threads (runner)")
    ap.add_argument("--images", default="/tmp/embed-bench-images")
    ap.add_argument("--num-images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="alternate runner/embed runs; best of each is kept")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()

    from resnet_deploy.models.preprocessing import list_images
    from resnet_deploy.pipelines import Embedder

    folder = Path(args.images)
    paths = list_images(folder) if folder.is_dir() else []
    if len(paths) < args.num_images:
        paths = make_images(folder, args.num_images)
    paths = paths[:args.num_images]
    kw = {"threads": args.threads} if args.threads else {}
    with Embedder(args.model, backend=args.backend, device=args.device, batch_size=args.batch_size,
                  workers=args.workers, **kw) as emb:
        bs = emb.batch_size
        crop = emb.preprocessing.crop_size
        rng = np.random.default_rng(0)
        if emb.uint8_input:
            batch = rng.integers(0, 256, (bs, crop, crop, 3), dtype=np.uint8)
        else:
            batch = rng.standard_normal((bs, 3, crop, crop)).astype(np.float32)
        n_batches = -(-len(paths) // bs)
        list(emb.runner.infer_stream([batch] * 2))  # warm-up
        list(emb.iter_embed(paths[:bs]))
        runner_s, embed_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in emb.runner.infer_stream(batch for _ in range(n_batches)):
                pass
            runner_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rows = sum(len(r) for _, r in emb.iter_embed(paths))
            embed_s.append(time.perf_counter() - t0)
        info = emb.describe()
    runner_ips = n_batches * bs / min(runner_s)
    embed_ips = rows / min(embed_s)
    result = {"model": args.model, "backend": info["backend"], "device": info["device"],
              "precision": info["precision"], "batch_size": bs, "workers": info["workers"], "images": rows,
              "cpu_count": os.cpu_count(), "runner_img_per_s": round(runner_ips, 2),
              "embed_img_per_s": round(embed_ips, 2), "ratio": round(embed_ips / runner_ips, 3),
              "runner_s": [round(s, 3) for s in runner_s], "embed_s": [round(s, 3) for s in embed_s]}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
