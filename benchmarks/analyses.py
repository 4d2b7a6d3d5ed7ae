"""Time the encoding analyses at Algonauts size (issue 19).

1. Significance: the per-vertex permutation test of held-out r at 39,548 vertices x 1,000
   permutations (``brainattn.analyses.significance.permutation_pvalues``) and the bootstrap of
   ROI-median intervals, on the GPU, for 159 (the challenge's test images) and 984 (a 10 %
   validation split of 9,841) images; peer: the same function on the host's CPU cores, same run.
2. Layer sweep: features of 4 blocks of a ViT-B/14 (random weights: speed does not depend on
   them) for N images, one forward pass for all layers (``layer_outputs``) against one
   extraction per layer; the model alone (tensors on the device) and end to end through the
   feature cache from PNG files (``get_layer_features`` vs ``get_features`` per layer).

Usage: ``python benchmarks/analyses.py --json OUT.json`` (prints a markdown summary); the
numbers go into benchmarks/RESULTS.md, section ``analyses``, by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeat: int = 3) -> float:
    """Best of ``repeat`` timed calls after one warm-up call (``repeat=0``: the one call)."""
    t0 = time.perf_counter()
    fn()  # warm-up (allocator, kernels)
    _sync()
    best = time.perf_counter() - t0 if repeat == 0 else float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_significance(n_vertices: int, n_perm: int, images: list[int], devs: list[str],
                       memory_mb: list[float | None]) -> list[dict]:
    from brainattn.analyses.significance import bootstrap_r, permutation_pvalues

    rows = []
    rng = np.random.default_rng(0)
    for n in images:
        z = rng.standard_normal((n, n_vertices), dtype=np.float32)
        true = (0.3 * z + rng.standard_normal((n, n_vertices), dtype=np.float32)).astype(np.float32)
        for dev in devs:
            # the CPU peer: the permutation test once (the bootstrap costs about 3x as much)
            for mem in (memory_mb if dev == "cuda" else [None]):
                reps = 3 if dev == "cuda" else 0
                t = _timed(lambda d=dev, m=mem, z=z, true=true: permutation_pvalues(
                    z, true, n_permutations=n_perm, device=d, memory_mb=m), repeat=reps)
                tb = (_timed(lambda d=dev, m=mem, z=z, true=true: bootstrap_r(
                    z, true, n_bootstrap=n_perm, device=d, memory_mb=m), repeat=reps)
                    if dev == "cuda" else float("nan"))
                rows.append({"part": "permutation", "device": dev, "n_images": n,
                             "n_vertices": n_vertices, "n_permutations": n_perm,
                             "memory_mb": mem, "permutation_s": t, "bootstrap_s": tb})
                print(rows[-1], flush=True)
    return rows


def bench_sweep(n_images: int, layers: list[int], arch: str, image_size: int) -> list[dict]:
    from PIL import Image

    from brainattn.encoders.backbones import TimmViTBackbone
    from brainattn.encoders.cache import get_features, get_layer_features

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    bb = TimmViTBackbone(arch, None, image_size=image_size, allow_random=True, device=dev)
    rows = []
    x = torch.rand(n_images, 3, image_size, image_size, device=dev)

    def one_pass():
        for s in range(0, n_images, 64):
            bb.layer_outputs(x[s : s + 64], layers)

    def per_layer():
        for ly in layers:
            b = bb.with_layer(ly)
            for s in range(0, n_images, 64):
                b(x[s : s + 64])

    t1, tn = _timed(one_pass), _timed(per_layer)
    rows.append({"part": "sweep-model", "device": dev, "arch": arch, "image_size": image_size,
                 "n_images": n_images, "layers": layers, "one_pass_s": t1, "per_layer_s": tn})
    print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(n_images):
            p = Path(d) / f"img{i:05d}.png"
            Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(p)
            paths.append(str(p))
        t0 = time.perf_counter()
        get_layer_features(bb, layers, paths, dataset_tag="a", cache_dir=Path(d) / "c1",
                           batch_size=64, device=dev)
        _sync()
        t1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        for ly in layers:
            get_features(bb.with_layer(ly), paths, dataset_tag="b", cache_dir=Path(d) / "c2",
                         batch_size=64, device=dev)
        _sync()
        tn = time.perf_counter() - t0
    rows.append({"part": "sweep-cache", "device": dev, "arch": arch, "image_size": image_size,
                 "n_images": n_images, "layers": layers, "one_pass_s": t1, "per_layer_s": tn})
    print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vertices", type=int, default=39548)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--images", default="159,984", help="test images, comma-separated")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU peer")
    ap.add_argument("--cpu-images", default="159", help="image counts the CPU peer runs")
    ap.add_argument("--sweep-images", type=int, default=1024)
    ap.add_argument("--layers", default="3,6,9,11")
    ap.add_argument("--arch", default="vit_base_patch14_dinov2")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--parts", default="permutation,sweep")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    import brainattn

    info = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "torch": torch.__version__, "brainattn": brainattn.__version__,
            "python": platform.python_version(),
            "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "cpu_threads": torch.get_num_threads()}
    print(info, flush=True)
    rows = []
    parts = a.parts.split(",")
    if "permutation" in parts:
        imgs = [int(v) for v in a.images.split(",")]
        if torch.cuda.is_available():
            rows += bench_significance(a.vertices, a.permutations, imgs, ["cuda"],
                                       [None, 16384])
        if not a.no_cpu:
            rows += bench_significance(a.vertices, a.permutations,
                                       [int(v) for v in a.cpu_images.split(",")], ["cpu"], [None])
    if "sweep" in parts:
        rows += bench_sweep(a.sweep_images, [int(v) for v in a.layers.split(",")], a.arch,
                            a.image_size)
    if a.json:
        a.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    for r in rows:
        if r["part"] == "permutation":
            print(f"| permutation | {r['device']} | {r['n_images']} | {r['n_vertices']} | "
                  f"{r['n_permutations']} | memory_mb {r['memory_mb'] or 'default'} | "
                  f"{r['permutation_s']:.3f} s | bootstrap {r['bootstrap_s']:.3f} s |")
        else:
            print(f"| {r['part']} | {r['device']} | {r['arch']} {r['image_size']} px | {r['n_images']} "
                  f"images | layers {r['layers']} | one pass {r['one_pass_s']:.2f} s | one per "
                  f"layer {r['per_layer_s']:.2f} s | {r['per_layer_s'] / r['one_pass_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
