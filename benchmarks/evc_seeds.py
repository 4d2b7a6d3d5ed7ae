"""Early-visual and category results of the three encoders on unseen synthetic cortices
(issue 21): ``--seeds`` data seeds x ``--images`` sizes, each a fresh
``brainattn.data.synth.generate(subjects=1, images=N, seed=S)``, fitted with the README's CPU
settings (ridge and factorized as ``brainattn fit synth --model M``, the transformer as
``--preset cpu``, i.e. :data:`brainattn.encoders.run.DEMO_OPTIONS`), one process, one model at a
time. Scores: median noise-normalised accuracy (% of the noise ceiling) over the early-visual
and over the category-selective vertices of the held-out test images
(:func:`brainattn.encoders.synthcheck.roi_group_medians`).

Usage::

    PYTHONPATH=. python benchmarks/evc_seeds.py --seeds 7,8,9 --images 1000,2000 \
        --json evc_seeds.json

Each finished cell is written to ``--json`` at once (a rerun skips the cells already there,
so ``--models transformer`` after a change refits only the transformer); the table is printed
at the end. The significance test's permutations and bootstrap are off (``--permutations 0
--bootstrap 1``): they do not change the medians and cost CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MODELS = ("ridge", "factorized", "transformer")


def table(cells: dict) -> str:
    """Markdown table: one row per (seed, images), EVC and category medians of each model."""
    lines = ["| seed | images | EVC transformer | EVC factorized | EVC ridge | EVC gap (T - F) "
             "| category transformer | category factorized | category ridge |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(cells, key=lambda k: tuple(int(p) for p in k.split("/"))):
        c = cells[key]
        seed, n = key.split("/")

        def g(m, f, c=c):
            return c[m][f] if m in c else float("nan")

        gap = g("transformer", "early_visual") - g("factorized", "early_visual")
        lines.append(f"| {seed} | {n} | {g('transformer', 'early_visual'):.1f} | "
                     f"{g('factorized', 'early_visual'):.1f} | {g('ridge', 'early_visual'):.1f} | "
                     f"{gap:+.1f} | {g('transformer', 'category'):.1f} | "
                     f"{g('factorized', 'category'):.1f} | {g('ridge', 'category'):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    import torch

    from brainattn.data.synth import generate
    from brainattn.encoders.run import DEMO_OPTIONS
    from brainattn.encoders.synthcheck import demo_fit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="7,8,9")
    ap.add_argument("--images", default="1000,2000")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp"))
                    / "brainattn-evc-seeds")
    ap.add_argument("--json", type=Path, default=Path("evc_seeds.json"))
    ap.add_argument("--refit", action="store_true", help="refit cells already in --json")
    ap.add_argument("--prf-lr", type=float, default=None,
                    help="the transformer's --prf-lr (default: the estimator's, 5; 1 = before "
                         "issue 21)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    sizes = [int(s) for s in args.images.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    res = json.loads(args.json.read_text()) if args.json.is_file() else {}
    res.update({"device": args.device, "torch": torch.__version__,
                "python": platform.python_version(), "threads": torch.get_num_threads(),
                "options": DEMO_OPTIONS})
    cells = res.setdefault("cells", {})
    quiet = {"permutations": 0, "bootstrap": 1}
    tr = {**DEMO_OPTIONS["transformer"], **quiet}
    if args.prf_lr is not None:
        tr["prf_lr"] = args.prf_lr
        res["prf_lr"] = args.prf_lr
    for n in sizes:
        for s in seeds:
            key = f"{s}/{n}"
            todo = [m for m in models if args.refit or m not in cells.get(key, {})]
            if not todo:
                continue
            root = args.workdir / f"synth-s{s}-n{n}"
            if not (root / "subj01").is_dir():
                t0 = time.perf_counter()
                generate(root, subjects=1, images=n, seed=s, overwrite=True,
                         n_jobs=max(1, min(2, os.cpu_count() or 1)))
                print(f"{key}: generated in {time.perf_counter() - t0:.1f} s", flush=True)
            for m in todo:  # one model at a time, so each cell's JSON is written when it is done
                r = demo_fit(root, args.workdir / "runs" / f"s{s}-n{n}", device=args.device,
                             cache_dir=args.workdir / "cache" / f"s{s}-n{n}", models=(m,),
                             transformer=tr,
                             factorized=quiet, ridge=quiet)[m]
                att = r.pop("attention_in_box", None)
                if att is not None:  # share of category-query attention peaks in the box
                    r["attention_in_box"] = att["all"][0]
                cells.setdefault(key, {})[m] = {k: round(float(v), 4) for k, v in r.items()}
                print(key, m, json.dumps(cells[key][m]), flush=True)
                args.json.write_text(json.dumps(res, indent=1, default=str))
    print(table(cells))
    return res


if __name__ == "__main__":
    main()
