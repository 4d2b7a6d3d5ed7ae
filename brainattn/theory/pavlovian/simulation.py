"""The Pavlovian simulation: the three experiments in, the figure's Dataset and its table out."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from brainattn.theory._config import cpu_threads, validate_pavlovian
from brainattn.theory.pavlovian.experiments import (
    RULES,
    rules_theory,
    run_capacity,
    run_propagation,
    run_rules,
    run_worst_case,
)
from brainattn.theory.pavlovian.predictions import (
    bit_error_from_snr,
    capacity_average_theory,
    capacity_from_curve,
    capacity_worst_case_ev_theory,
    capacity_worst_case_theory,
    cosine_from_snr,
    fit_exponent,
    propagation_limit_theory,
    propagation_theory,
    snr_theory,
    top1_theory,
)


def simulate(config: dict[str, Any], *, device=None):
    """Run the three Pavlovian experiments and return the figure's data as an ``xarray.Dataset``.

    Dimensions: ``d_k`` x ``load`` (capacity sweep, ``n_pairs`` = round(load * d_k)), ``rule`` x
    ``rules_n`` (learning rules at ``rules_d_k``), ``layer`` x ``heads`` (error propagation at
    ``prop_d_k``, ``prop_n`` pairs). Every ``*_sim`` variable has its analytic ``*_theory``
    beside it; the fitted capacity exponents are 0-d variables.
    """
    import xarray as xr

    from brainattn.utils import progress, resolve_device

    c = validate_pavlovian(config)
    dev = resolve_device(device if device is not None else "auto")
    n_steps = len(c["d_k"]) * (len(c["load"]) + 1) + len(c["rules_n"]) + len(c["prop_heads"])
    timings = {}

    def timed(name, fn, *args):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        result = fn(*args)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timings[f"time_{name}_s"] = round(time.perf_counter() - t0, 4)
        return result

    with progress(total=n_steps, desc="pavlovian") as bar, cpu_threads(dev):
        cap = timed("capacity", run_capacity, c, dev, bar)
        wc = timed("worst_case", run_worst_case, c, dev, bar)
        rules = timed("rules", run_rules, c, dev, bar)
        prop = timed("propagation", run_propagation, c, dev, bar)

    dks = np.asarray(c["d_k"], float)
    n_pairs = cap["n_pairs"]
    dk2 = dks[:, None] * np.ones_like(n_pairs)
    snr_t = snr_theory(n_pairs, dk2)
    cap_avg_sim = np.array([
        capacity_from_curve(n_pairs[a], cap["bit_error"][a], c["error_rate"]) for a in range(len(dks))
    ])
    cap_avg_t = capacity_average_theory(dks, c["error_rate"])
    cap_wc_t = capacity_worst_case_theory(dks, c["worst_case_threshold"])
    rt = rules_theory(c)
    prop_t = propagation_theory(c["prop_n"], c["prop_d_k"], c["prop_heads"], c["prop_layers"])

    dl = ("d_k", "load")
    rn = ("rule", "rules_n")
    lh = ("layer", "heads")
    ds = xr.Dataset(
        {
            "snr_sim": (dl, cap["snr"], {"long_name": "signal-to-noise ratio ||v||^2/E||n||^2"}),
            "snr_theory": (dl, snr_t, {"long_name": "d_k / (N - 1)"}),
            "cosine_sim": (dl, cap["cosine"]),
            "cosine_theory": (dl, cosine_from_snr(snr_t)),
            "bit_error_sim": (dl, cap["bit_error"], {"long_name": "fraction of US signs wrong"}),
            "bit_error_theory": (dl, bit_error_from_snr(snr_t)),
            "top1_sim": (dl, cap["top1"], {"long_name": "top-1 identification among stored US"}),
            "top1_theory": (dl, top1_theory(n_pairs, dk2),
                            {"note": "rivals independent given the true US's score"}),
            "capacity_avg_sim": ("d_k", cap_avg_sim, {"units": "pairs"}),
            "capacity_avg_theory": ("d_k", cap_avg_t, {"units": "pairs"}),
            "capacity_wc_sim": ("d_k", wc, {"units": "pairs"}),
            "capacity_wc_theory": ("d_k", cap_wc_t, {"units": "pairs",
                                                     "long_name": "mean-field 1 + theta sqrt(pi d_k/2)"}),
            "capacity_wc_ev_theory": ("d_k", capacity_worst_case_ev_theory(
                dks, c["worst_case_threshold"]), {"units": "pairs",
                                                  "long_name": "extreme-value refinement"}),
            "exponent_avg_sim": ((), fit_exponent(dks, cap_avg_sim)),
            "exponent_avg_theory": ((), fit_exponent(dks, cap_avg_t)),
            "exponent_wc_sim": ((), fit_exponent(dks, wc)),
            "exponent_wc_theory": ((), fit_exponent(dks, cap_wc_t)),
            "rule_cosine_sim": (rn, rules["cosine"]),
            "rule_cosine_theory": (rn, rt["cosine"]),
            "rule_bit_error_sim": (rn, rules["bit_error"]),
            "rule_bit_error_theory": (rn, rt["bit_error"]),
            "rule_top1_sim": (rn, rules["top1"]),
            "rule_snr_sim": (rn, rules["snr"], {"long_name": "E[g^2]/E||v_hat - g v||^2, g = v_hat.v"}),
            "rule_snr_theory": (rn, rt["snr"]),
            "error_power_sim": (lh, prop, {"long_name": "E||v_hat - v||^2 after each layer"}),
            "error_power_theory": (lh, prop_t),
            "error_power_limit_theory": ("heads", propagation_limit_theory(
                c["prop_n"], c["prop_d_k"], c["prop_heads"])),
        },
        coords={
            "d_k": ("d_k", np.asarray(c["d_k"]), {"units": "dims"}),
            "load": ("load", np.asarray(c["load"]), {"long_name": "N / d_k"}),
            "n_pairs": (dl, n_pairs.astype(np.int64)),
            "rule": ("rule", list(RULES)),
            "rules_n": ("rules_n", np.asarray(c["rules_n"])),
            "layer": ("layer", np.arange(1, c["prop_layers"] + 1)),
            "heads": ("heads", np.asarray(c["prop_heads"])),
        },
        attrs={
            "simulation": "pavlovian",
            "error_rate": c["error_rate"],
            "worst_case_threshold": c["worst_case_threshold"],
            "rules_d_k": c["rules_d_k"],
            "softmax_beta": float(c["softmax_beta"] if c["softmax_beta"] is not None
                                  else math.sqrt(c["rules_d_k"])),
            "prop_d_k": c["prop_d_k"],
            "prop_n": c["prop_n"],
            "sim_device": str(dev),
            **timings,
            "config": {k: config[k] for k in sorted(config)},
        },
    )
    return ds


def summary(ds):
    """The table the CLI prints (``pandas.DataFrame``): one row per headline number.

    Columns ``quantity``, ``setting``, ``simulation``, ``theory``.
    """
    import pandas as pd

    rows = []
    for d in ds["d_k"].values:
        sel = ds.sel(d_k=d)
        rows.append((f"capacity @ bit error {ds.attrs['error_rate']:g}", f"d_k={d}",
                     float(sel["capacity_avg_sim"]), float(sel["capacity_avg_theory"])))
    for d in ds["d_k"].values:
        sel = ds.sel(d_k=d)
        rows.append(("error-free capacity", f"d_k={d}",
                     float(sel["capacity_wc_sim"]), float(sel["capacity_wc_theory"])))
        rows.append(("error-free capacity (extreme value)", f"d_k={d}",
                     float(sel["capacity_wc_sim"]), float(sel["capacity_wc_ev_theory"])))
    rows.append(("exponent: capacity ~ d_k^a", "average case",
                 float(ds["exponent_avg_sim"]), float(ds["exponent_avg_theory"])))
    rows.append(("exponent: capacity ~ d_k^a", "error-free",
                 float(ds["exponent_wc_sim"]), float(ds["exponent_wc_theory"])))
    one = ds.sel(load=1.0, method="nearest")
    for d in ds["d_k"].values:
        sel = one.sel(d_k=d)
        rows.append(("SNR", f"d_k={d}, N={int(sel['n_pairs'])}",
                     float(sel["snr_sim"]), float(sel["snr_theory"])))
    dr = ds.attrs["rules_d_k"]
    for r in ds["rule"].values:
        for n in ds["rules_n"].values:
            if n in (dr // 2, dr, 2 * dr):
                sel = ds.sel(rule=r, rules_n=n)
                rows.append((f"bit error, {r}", f"d_k={dr}, N={n}",
                             float(sel["rule_bit_error_sim"]), float(sel["rule_bit_error_theory"])))
    for h in ds["heads"].values:
        sel = ds.sel(heads=h)
        rows.append(("error power after layer 1", f"H={h}",
                     float(sel["error_power_sim"][0]), float(sel["error_power_theory"][0])))
        rows.append((f"error power after layer {int(ds['layer'][-1])}", f"H={h}",
                     float(sel["error_power_sim"][-1]), float(sel["error_power_theory"][-1])))
    return pd.DataFrame(rows, columns=["quantity", "setting", "simulation", "theory"])
