"""The three Pavlovian experiments, batched over trials (``max_batch_elements`` per tensor).

:func:`run_capacity` (Hebbian sweep over ``d_k`` x load), :func:`run_worst_case` (error-free
capacity), :func:`run_rules` (four learning rules on the same streams) with
:func:`rules_theory` beside it, and :func:`run_propagation` (error through layers and heads).
Each takes a validated config (:func:`brainattn.theory._config.validate_pavlovian`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from brainattn.theory.pavlovian.memory import (
    decay_memory,
    delta_rule_memory,
    hebbian_memory,
    linear_attention,
    random_keys,
    random_values,
    retrieval_stats,
    retrieve,
    softmax_attention,
    worst_case_capacity,
)
from brainattn.theory.pavlovian.predictions import (
    bit_error_from_snr,
    capacity_worst_case_theory,
    cosine_from_snr,
    decay_theory,
    delta_snr_theory,
    snr_theory,
    softmax_snr_theory,
)

RULES = ("hebbian", "delta", "hebbian_decay", "softmax")


def _chunks(n_trials: int, per_trial: int, max_elements: int):
    size = max(1, min(n_trials, max_elements // max(per_trial, 1)))
    start = 0
    while start < n_trials:
        yield start, min(size, n_trials - start)
        start += size


def _n_grid(d: int, loads) -> list[int]:
    return [max(2, int(round(a * d))) for a in loads]


def run_capacity(c: dict, device, bar=None) -> dict[str, np.ndarray]:
    """Hebbian storage/retrieval sweep over ``d_k`` x load; returns ``(d_k, load)`` arrays."""
    dks, loads = c["d_k"], c["load"]
    shape = (len(dks), len(loads))
    out = {k: np.zeros(shape) for k in ("snr", "cosine", "bit_error", "top1", "n_pairs")}
    gen = torch.Generator(device=device).manual_seed(c["seed"])
    for a, d in enumerate(dks):
        for b, n in enumerate(_n_grid(d, loads)):
            nq = min(c["n_queries"], n)
            # small memories get more trials so every point has >= 2 n_trials n_queries samples
            n_trials = max(c["n_trials"], -(-2 * c["n_trials"] * c["n_queries"] // n))
            acc = {"noise_power": 0.0, "cosine": 0.0, "bit_error": 0.0, "top1": 0.0}
            idx = torch.arange(nq, device=device)
            for _, size in _chunks(n_trials, n * d, c["max_batch_elements"]):
                keys = random_keys(size, n, d, generator=gen, device=device)
                vals = random_values(size, n, d, generator=gen, device=device)
                v_hat = linear_attention(keys, vals, keys[:, :nq])
                st = retrieval_stats(v_hat, vals[:, :nq], vals, idx)
                for key in acc:
                    acc[key] += float(st[key].sum())
            count = n_trials * nq
            out["snr"][a, b] = count / acc["noise_power"]
            out["cosine"][a, b] = acc["cosine"] / count
            out["bit_error"][a, b] = acc["bit_error"] / count
            out["top1"][a, b] = acc["top1"] / count
            out["n_pairs"][a, b] = n
            if bar is not None:
                bar.update(1)
    return out


def run_worst_case(c: dict, device, bar=None) -> np.ndarray:
    """Median error-free capacity per ``d_k`` (``(len(d_k),)``)."""
    gen = torch.Generator(device=device).manual_seed(c["seed"] + 1)
    theta = c["worst_case_threshold"]
    caps = np.zeros(len(c["d_k"]))
    for a, d in enumerate(c["d_k"]):
        n_max = int(math.ceil(3.0 * capacity_worst_case_theory(d, theta))) + 8
        per = []
        for _, size in _chunks(c["worst_case_trials"], n_max * max(n_max, d), c["max_batch_elements"]):
            keys = random_keys(size, n_max, d, generator=gen, device=device)
            per.append(worst_case_capacity(keys, theta).cpu())
        caps[a] = float(torch.cat(per).double().median())
        if bar is not None:
            bar.update(1)
    return caps


def run_rules(c: dict, device, bar=None) -> dict[str, np.ndarray]:
    """Hebbian, delta, decay and softmax on the same streams; ``(rule, rules_n)`` arrays."""
    d = c["rules_d_k"]
    beta = c["softmax_beta"] if c["softmax_beta"] is not None else math.sqrt(d)
    ns = c["rules_n"]
    shape = (len(RULES), len(ns))
    out = {k: np.zeros(shape) for k in ("cosine", "bit_error", "top1", "snr")}
    gen = torch.Generator(device=device).manual_seed(c["seed"] + 2)
    for b, n in enumerate(ns):
        acc = {r: {"cosine": 0.0, "bit_error": 0.0, "top1": 0.0, "gain2": 0.0, "perp": 0.0}
               for r in RULES}
        idx = torch.arange(n, device=device)
        for _, size in _chunks(c["rules_trials"], n * d, c["max_batch_elements"]):
            keys = random_keys(size, n, d, generator=gen, device=device)
            vals = random_values(size, n, d, generator=gen, device=device)
            recalls = {
                "hebbian": retrieve(hebbian_memory(keys, vals), keys),
                "delta": retrieve(
                    delta_rule_memory(keys, vals, lr=c["delta_lr"], epochs=c["delta_epochs"]), keys
                ),
                "hebbian_decay": retrieve(decay_memory(keys, vals, c["decay"]), keys),
                "softmax": softmax_attention(keys, vals, keys, beta=beta),
            }
            for r, v_hat in recalls.items():
                st = retrieval_stats(v_hat, vals, vals, idx)
                acc[r]["cosine"] += float(st["cosine"].sum())
                acc[r]["bit_error"] += float(st["bit_error"].sum())
                acc[r]["top1"] += float(st["top1"].sum())
                acc[r]["gain2"] += float((st["gain"] ** 2).sum())
                acc[r]["perp"] += float(st["perp_power"].sum())
        count = c["rules_trials"] * n
        for a, r in enumerate(RULES):
            out["cosine"][a, b] = acc[r]["cosine"] / count
            out["bit_error"][a, b] = acc[r]["bit_error"] / count
            out["top1"][a, b] = acc[r]["top1"] / count
            perp = acc[r]["perp"]
            out["snr"][a, b] = acc[r]["gain2"] / perp if perp > 0 else np.inf
        if bar is not None:
            bar.update(1)
    return out


def rules_theory(c: dict) -> dict[str, np.ndarray]:
    """Analytic bit error, cosine and SNR for each rule (``(rule, rules_n)``)."""
    d = c["rules_d_k"]
    beta = c["softmax_beta"] if c["softmax_beta"] is not None else math.sqrt(d)
    ns = np.asarray(c["rules_n"], float)
    snr = np.stack([
        snr_theory(ns, d),
        delta_snr_theory(ns, d),
        np.full(ns.shape, np.nan),
        softmax_snr_theory(ns, d, beta),
    ])
    bit = bit_error_from_snr(snr)
    cos = cosine_from_snr(snr)
    for b, n in enumerate(ns):
        bit[2, b], cos[2, b] = decay_theory(int(n), d, c["decay"])
    return {"bit_error": bit, "cosine": cos, "snr": snr}


def run_propagation(c: dict, device, bar=None) -> np.ndarray:
    """Mean error power after each of ``prop_layers`` layers for each head count; ``(L, H)``."""
    d, n, n_layers = c["prop_d_k"], c["prop_n"], c["prop_layers"]
    heads = c["prop_heads"]
    gen = torch.Generator(device=device).manual_seed(c["seed"] + 3)
    out = np.zeros((n_layers, len(heads)))
    for h_i, h in enumerate(heads):
        sums = np.zeros(n_layers)
        for _, size in _chunks(c["prop_trials"], h * n * d, c["max_batch_elements"]):
            err_norm = torch.zeros(size, n, device=device)  # ||e|| of the layer input, per query
            for l in range(n_layers):
                vals = random_values(size, n, d, generator=gen, device=device)
                keys = random_keys(size * h, n, d, generator=gen, device=device).view(size, h, n, d)
                u = random_keys(size * h, n, d, generator=gen, device=device).view(size, h, n, d)
                q = keys + err_norm[:, None, :, None] * u
                coef = q @ keys.transpose(-1, -2)  # (B, H, Q, N)
                v_hat = (coef @ vals[:, None]).mean(1)  # average of the H heads
                e = v_hat - vals
                power = (e * e).sum(-1)
                sums[l] += float(power.sum())
                err_norm = power.sqrt()
        out[:, h_i] = sums / (c["prop_trials"] * n)
        if bar is not None:
            bar.update(1)
    return out
