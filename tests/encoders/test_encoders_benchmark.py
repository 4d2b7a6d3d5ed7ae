"""``benchmarks/encoder.py --tiny`` runs on the CPU (so the script cannot rot); no timings are
asserted, only that every part ran, the data it wrote has the planned layout, and the planted
signal is found."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_encoder", ROOT / "benchmarks" / "encoder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_benchmark_runs_every_part(bench, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "r.md"
    res = bench.main(["--tiny", "--workdir", str(tmp_path / "w"), "--out", str(out),
                      "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    parts = res["parts"]
    assert set(parts) == {"brainattn_graph", "brainattn", "published", "published_gpu",
                          "vertices", "ridge", "synth"}
    assert parts["brainattn_graph"]["cuda_graph"] == "off"  # auto on a CPU: eager steps
    assert parts["synth"]["data"]["n_queries"] >= 20  # ROI queries of the synthetic cortex
    assert np.isfinite(parts["synth"]["brainattn"]["val_r"]).all()
    for k in ("brainattn_graph", "brainattn", "published", "published_gpu"):
        assert len(parts[k]["epoch_s"]) == 1 and np.isfinite(parts[k]["val_r"]).all()
    assert parts["vertices"]["n_queries"] == 320 and parts["vertices"]["ms_per_step"] > 0
    # the planted signal is linear in the pooled tokens: ridge must find some of it
    assert parts["ridge"]["brainattn_val_r"] > 0.03
    assert parts["ridge"]["himalaya_defaults_val_r"] > 0.03
    md = out.read_text()
    assert "speed-up brainattn vs published" in md and "| model | batch |" in md
    assert json.loads((tmp_path / "r.json").read_text())["size"] == "tiny"
    # the cache it wrote is a brainattn feature cache of the planned size
    from brainattn.encoders.cache import FeatureCache

    (folder,) = [p for p in (tmp_path / "w").iterdir() if p.name.startswith("bench_")]
    cache = FeatureCache(folder)
    assert cache.features.dtype == np.float16 and cache.features.shape == (64, 16, 32)
    assert cache.grid == (4, 4)


def test_vertex_layout_has_published_query_count(bench):
    cfg = dict(bench.SIZES["full"])
    hemi, labels, vq, names = bench.vertex_layout(cfg)
    assert (hemi == "lh").sum() == 19004 and (hemi == "rh").sum() == 20544
    assert len(names) == 50  # 24 ROIs + other, per hemisphere
    assert names[24] == "lh:other" and names[-1] == "rh:other"
    n_ffa = int(((labels["floc-faces"] == "FFA-1") & (hemi == "lh")).sum())
    assert n_ffa == 600


def test_published_model_matches_its_definition(bench):
    """The peer's readout: every vertex takes its own ROI query's row of the hemisphere's
    Linear -- checked against an explicit loop over vertices."""
    from published_decoder import PublishedEncoder

    from brainattn.encoders.transformer import sine_position_encoding

    torch.manual_seed(0)
    hemi = np.array(["lh"] * 5 + ["rh"] * 4)
    vq = np.array([0, 1, 0, 2, 1, 3, 4, 3, 4])
    m = PublishedEncoder(6, sine_position_encoding((2, 2), 8), hemi, vq, d=8, nhead=2,
                         dim_ff=16, dropout=0.0).eval()
    x = torch.randn(3, 4, 6)
    got = m(x)
    memory = m.input_proj(x).transpose(0, 1)
    qp = m.query_embed.weight[:, None, :].expand(-1, 3, -1)
    hs = m.norm(m.layer(torch.zeros_like(qp), memory, m.pos, qp)).transpose(0, 1)
    for v in range(9):
        lin = m.lh_embed if hemi[v] == "lh" else m.rh_embed
        row = v if hemi[v] == "lh" else v - 5
        want = hs[:, vq[v]] @ lin.weight[row] + lin.bias[row]
        torch.testing.assert_close(got[:, v], want, rtol=1e-5, atol=1e-6)


def test_tiny_estimators_benchmark_runs_every_part(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_estimators",
                                                  ROOT / "benchmarks" / "estimators.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.set_num_threads(1)
    res = mod.main(["--size", "tiny", "--epochs", "1", "--workdir", str(tmp_path / "w"),
                    "--out", str(tmp_path / "e.md"), "--device", "cpu"])
    parts = res["parts"]
    assert set(parts) == {"fit_memory", "fit_memmap", "cli", "ridge", "engine"}
    # the same fit from host memory and from the memory map: the same model
    assert parts["fit_memory"]["val_r"] == parts["fit_memmap"]["val_r"]
    assert parts["cli"]["n_train"] > 0 and parts["fit_memmap"]["setup_s"] >= 0
    r = parts["ridge"]  # the same alphas, folds and score as himalaya: the same r
    assert abs(r["brainattn_default_val_r"] - r["himalaya_same_settings_val_r"]) < 2e-3, r
    assert "| path | fit -> first step (s)" in (tmp_path / "e.md").read_text()
