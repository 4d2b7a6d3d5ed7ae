"""Several fits in one call (``brainattn fit --subject subj01,subj02 --backbone ... --layer
...``), scheduled over the GPUs by :func:`plan_fits`: with at least as many fits as GPUs, each
GPU runs whole fits on its own (no gradient traffic, throughput scales with the GPU count); with
fewer fits than GPUs, the fits run one after another, each data-parallel over all GPUs
(:mod:`brainattn.encoders.distributed`). Each fit is :func:`brainattn.encoders.run.fit_run`
into ``out/<subject>__<backbone>__layer<L>``.

This module orchestrates: it sits above ``run`` and ``distributed``, and neither imports it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from brainattn.encoders.distributed import env_world, init_distributed, shutdown
from brainattn.encoders.run import fit_run
from brainattn.errors import BrainAttnError, ConfigError


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_fits(n_fits: int, n_gpus: int) -> str:
    """How to run ``n_fits`` independent fits on ``n_gpus`` GPUs.

    ``"independent"``: one fit per GPU at a time (needs ``n_fits >= n_gpus >= 2``): no gradient
    all-reduce, no synchronisation, each GPU at its single-GPU speed -- faster than DDP, whose
    speed-up per GPU is below 1. ``"ddp"``: a single fit, or fewer fits than GPUs: each fit in
    turn is data-parallel over all GPUs. ``"sequential"``: one GPU or none.
    """
    if n_fits < 1:
        raise ConfigError("no fits to run")
    if n_gpus <= 1:
        return "sequential"
    return "independent" if n_fits >= n_gpus else "ddp"


def assign_fits(n_fits: int, n_workers: int, worker: int) -> list[int]:
    """Fits (indices) that worker ``worker`` runs under the ``independent`` plan: round robin."""
    return list(range(worker, n_fits, n_workers))


def fit_name(subject: str, backbone: str, layer: int) -> str:
    """Sub-folder of one fit among several: ``<subject>__<backbone>__layer<L>``."""
    return f"{subject}__{backbone}__layer{layer}"


def _fit_worker(jobs, data, common: dict, device: str) -> None:
    if str(device).startswith("cuda:"):  # Triton launches on the current device
        torch.cuda.set_device(torch.device(device))
    for out, opts in jobs:
        fit_run(data, out, **common, **opts, device=device)


def fit_many(data, out, fits: list[dict], *, log=print, **common) -> list:
    """Run several fits (``fits``: dicts of ``subject``/``backbone``/``layer``), each into
    ``out/<fit_name>``, scheduled by :func:`plan_fits` over the GPUs (torchrun's ranks, else
    the visible GPUs through one worker process per GPU). Returns the run folders."""
    out = Path(out)
    jobs = [(out / fit_name(f["subject"], f["backbone"], f["layer"]), f) for f in fits]
    device = common.pop("device", "auto")
    world = env_world()
    if world is not None and world[1] > 1:
        rank, size, local = world
        plan = plan_fits(len(jobs), size)
        if plan == "independent":  # no process group: each rank runs whole fits on its GPU
            dev = f"cuda:{local}" if torch.cuda.is_available() and device != "cpu" else "cpu"
            mine = [jobs[i] for i in assign_fits(len(jobs), size, rank)]
            if rank == 0:
                log(f"{len(jobs)} fits on {size} processes: one fit per process at a time")
            _fit_worker(mine, data, common, dev)
            return [j[0] for j in mine]
        init_distributed(device)
        for o, f in jobs:
            fit_run(data, o, **common, **f, device=device)
        shutdown()  # only on success (see the fit CLI: no teardown while a peer may wait)
        return [j[0] for j in jobs]
    n_gpus = visible_gpus() if device in ("auto", "cuda") else 0
    plan = plan_fits(len(jobs), n_gpus)
    if plan == "independent":
        import multiprocessing as mp

        log(f"{len(jobs)} fits on {n_gpus} GPUs: one worker process per GPU")
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_fit_worker,
                             args=([jobs[i] for i in assign_fits(len(jobs), n_gpus, g)], data,
                                   common, f"cuda:{g}")) for g in range(n_gpus)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [g for g, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise BrainAttnError(f"the fits on GPU(s) {bad} failed (see their messages above); "
                                 "finished runs are complete, rerun the others with --resume")
        return [j[0] for j in jobs]
    if plan == "ddp":
        log(f"{len(jobs)} fits, {n_gpus} GPUs: running them one after another on one GPU; "
            f"use torchrun --nproc_per_node={n_gpus} -m brainattn fit ... for data parallelism")
    _fit_worker(jobs, data, common, device)
    return [j[0] for j in jobs]
