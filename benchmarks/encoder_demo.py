"""The encoders' demo-size fit (issue 4) on whatever device is given: the three models on the
embedded synthetic cortex, one or both subjects, with the measured CPU preset
(:data:`brainattn.encoders.run.DEMO_OPTIONS`), and the science checks of each.

Usage::

    PYTHONPATH=. python benchmarks/encoder_demo.py --device cuda --subjects subj01,subj02 \
        --json demo_gpu.json

On CUDA the transformer trains under bf16 autocast through the Triton attention kernel (the
package's defaults there). The synthetic cortex is generated under ``--workdir`` first (not
timed with the fits); each model's seconds include its feature extraction when the cache is cold
(the first model of the first subject extracts, the others reuse the cache).
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


def main(argv=None) -> dict:
    import torch

    from brainattn.data.synth import generate
    from brainattn.encoders.run import DEMO_OPTIONS
    from brainattn.encoders.synthcheck import demo_fit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--subjects", default="subj01")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp"))
                    / "brainattn-encoder-demo")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    subjects = [s for s in args.subjects.split(",") if s]
    root = args.workdir / "synth"
    t0 = time.perf_counter()
    if not (root / subjects[-1]).is_dir():
        generate(root, subjects=len(subjects), images=args.images, seed=0, overwrite=True,
                 n_jobs=max(1, min(16, os.cpu_count() or 1)))
    res = {"device": args.device, "generate_s": round(time.perf_counter() - t0, 1),
           "torch": torch.__version__, "python": platform.python_version(),
           "options": DEMO_OPTIONS, "subjects": {}}
    if torch.cuda.is_available():
        import triton

        res["card"] = torch.cuda.get_device_name(0)
        res["triton"] = triton.__version__
    for s in subjects:
        t1 = time.perf_counter()
        r = demo_fit(root, args.workdir / "runs" / s, subject=s, device=args.device,
                     cache_dir=args.workdir / "cache", transformer=DEMO_OPTIONS["transformer"])
        r["all_three_s"] = round(time.perf_counter() - t1, 1)
        res["subjects"][s] = r
        print(s, json.dumps(r, default=str), flush=True)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
