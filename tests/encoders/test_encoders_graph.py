"""CUDA-graph training step (``fit_loop(cuda_graph=...)``) and the optimizer checkpoint format.

The GPU tests train a small TransformerModule twice from the same seed, once eagerly and once
with the step replayed as a CUDA graph, and compare the parameters. The CPU tests check that
``cuda_graph=True`` is refused on a CPU and that checkpoints of capturable/fused optimizers with
tensor learning rates load (the GPU run's format) on a plain CPU optimizer.
"""

import json

import numpy as np
import pytest
import torch

from brainattn.encoders.loader import ArrayLoader
from brainattn.encoders.training import (
    CudaGraphStep,
    fit_loop,
    load_checkpoint,
    prepare_graph_optimizer,
    save_checkpoint,
    set_lr,
)
from brainattn.encoders.transformer import TransformerBrainEncoder, TransformerModule
from brainattn.errors import BrainAttnError, ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

V, L, C = 200, 64, 64


def _data(n, seed=0):
    """Tokens (n, 64, 64) and z-scored targets (n, 200) with a planted linear signal."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, L, C)).astype(np.float32)
    W = rng.standard_normal((C, V)) / np.sqrt(C)
    Y = X.mean(1) @ W * 8 + 0.5 * rng.standard_normal((n, V))
    Y = (Y - Y.mean(0)) / Y.std(0)
    return X, Y.astype(np.float32)


def _module(dev, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    m = TransformerModule(L, C, V, vertex_query=np.arange(V) % 5, grid=(8, 8), width=64,
                          heads=4, ffn=128, dropout=dropout, seed=seed)
    return m.to(dev)


def _fit(cuda_graph, *, dev="cuda", dropout=0.0, epochs=2, schedule="cosine", lr=2e-3,
         n_train=51, seed=0, extra_loss=None):
    """Train from ``seed``; 51 rows = 6 full batches of 8 and a partial one of 3 per epoch."""
    X, Y = _data(n_train + 16)
    m = _module(dev, dropout, seed)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4,
                            **({"fused": True} if torch.device(dev).type == "cuda" else {}))
    tr = ArrayLoader(X, Y, np.arange(n_train), batch_size=8, shuffle=True, seed=seed, device=dev)
    va = ArrayLoader(X, Y, np.arange(n_train, n_train + 16), batch_size=16, device=dev)
    torch.manual_seed(seed + 1)
    st = fit_loop(m, opt, tr, va, epochs=epochs, config={}, device=dev, amp=True, grad_clip=1.0,
                  schedule=schedule, patience=None, cuda_graph=cuda_graph,
                  extra_loss=extra_loss)
    return m, st


def _flat(m):
    return torch.cat([p.detach().float().flatten() for p in m.parameters()])


@cuda
@pytest.mark.gpu
def test_graph_training_matches_eager_and_follows_the_lr_schedule():
    p0 = _flat(_module("cuda"))
    m_e, st_e = _fit(False)
    m_g, st_g = _fit(True)
    pe, pg = _flat(m_e), _flat(m_g)
    moved = (pe - p0).norm()
    assert moved > 0
    # same seed, dropout 0: the graph replays the eager kernels (bf16 autocast both ways)
    assert (pg - pe).norm() / moved < 0.02
    np.testing.assert_allclose([h["train_loss"] for h in st_g["history"]],
                               [h["train_loss"] for h in st_e["history"]], rtol=0.02)
    # the cosine schedule halves the lr in epoch 2; a constant lr must end elsewhere, so the
    # agreement above means the replayed step read the new lr
    m_c, _ = _fit(True, schedule="constant")
    assert (_flat(m_c) - pg).norm() / moved > 0.1


@cuda
@pytest.mark.gpu
def test_graph_dropout_is_random_across_replays_and_training_learns():
    m, st = _fit(True, dropout=0.1, epochs=6, n_train=96)
    losses = [h["train_loss"] for h in st["history"]]
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses
    # two replays on the same batch with lr 0 (parameters frozen) differ only by dropout masks
    X, Y = _data(8)
    for dropout, differ in ((0.1, True), (0.0, False)):
        m = _module("cuda", dropout)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
        prepare_graph_optimizer(opt, "cuda")
        g = CudaGraphStep(m.train(), opt, device="cuda", amp=True, grad_clip=1.0,
                          extra_loss=None, batch_size=8, warmup=2)
        x, y = torch.as_tensor(X, device="cuda"), torch.as_tensor(Y, device="cuda")
        for _ in range(3):  # two warm-up steps, then the capture (and its replay)
            g.step(x, y)
        assert g.graph is not None
        set_lr(opt.param_groups[0], 0.0)
        a = float(g.step(x, y))
        b = float(g.step(x, y))
        assert (a != b) == differ, (dropout, a, b)


@cuda
@pytest.mark.gpu
def test_a_step_that_cannot_be_captured_falls_back_to_eager_in_auto_mode():
    def syncs(m):  # reads a value back to the host: not capturable
        return 0.0 * float(m.readout_b.detach().sum())

    with pytest.raises(BrainAttnError, match="cuda_graph: capturing the training step failed"):
        _fit(True, epochs=1, extra_loss=syncs)
    with pytest.warns(UserWarning, match="capture of the training step failed"):
        m_a, st_a = _fit(None, extra_loss=syncs)
    m_e, st_e = _fit(False, extra_loss=syncs)
    pe = _flat(m_e)
    assert (_flat(m_a) - pe).norm() / (pe - _flat(_module("cuda"))).norm() < 0.02


# --------------------------------------------------------------------------------------------
# CPU


def test_cuda_graph_on_a_cpu_is_refused():
    with pytest.raises(ConfigError, match=r"cuda_graph=True: CUDA graphs need a CUDA device"):
        _fit(True, dev="cpu", epochs=1)
    est = TransformerBrainEncoder(width=16, heads=2, ffn=32, epochs=1, batch_size=8,
                                  patience=None, device="cpu")
    est.cuda_graph = True
    X, Y = _data(40)
    with pytest.raises(ConfigError, match="cuda_graph=True"):
        est.fit(X[:, :16], Y)


def test_auto_on_a_cpu_trains_eagerly_and_equals_false():
    m_a, st_a = _fit(None, dev="cpu", epochs=1, n_train=24)
    m_f, st_f = _fit(False, dev="cpu", epochs=1, n_train=24)
    assert torch.equal(_flat(m_a), _flat(m_f))
    assert st_a["history"][0]["train_loss"] == st_f["history"][0]["train_loss"]


def test_checkpoint_with_tensor_lr_and_gpu_flags_resumes_on_a_cpu(tmp_path):
    m = _module("cpu")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
    X, Y = _data(8)
    m.train()
    for _ in range(2):
        opt.zero_grad()
        torch.mean((m(torch.as_tensor(X)) - torch.as_tensor(Y)) ** 2).backward()
        opt.step()
    opt.param_groups[0]["lr"] = torch.tensor(3e-4)  # as prepare_graph_optimizer leaves it
    save_checkpoint(tmp_path, model=m, opt=opt, state={"epoch": 0, "config": {}})
    st = json.loads((tmp_path / "state.json").read_text())
    assert st["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4)
    # what a GPU run writes: fused, capturable
    st["optimizer"]["param_groups"][0].update(fused=True, capturable=True)
    (tmp_path / "state.json").write_text(json.dumps(st))

    m2 = _module("cpu", seed=1)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3, weight_decay=1e-4)
    load_checkpoint(tmp_path, model=m2, opt=opt2)
    g = opt2.param_groups[0]
    assert g["lr"] == pytest.approx(3e-4) and not g["capturable"] and not g["fused"]
    assert torch.equal(_flat(m2), _flat(m))
    for p, p2 in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[p2]["exp_avg"])
    opt2.step()  # a plain CPU step works on the loaded state

    # into an optimizer with a tensor lr: the same tensor object is kept, filled with the value
    m3 = _module("cpu", seed=2)
    opt3 = torch.optim.AdamW(m3.parameters(), lr=1e-3, weight_decay=1e-4)
    lr_t = torch.tensor(1.0)
    opt3.param_groups[0]["lr"] = lr_t
    load_checkpoint(tmp_path, model=m3, opt=opt3)
    assert opt3.param_groups[0]["lr"] is lr_t and float(lr_t) == pytest.approx(3e-4)


def test_graph_decision_with_data_parallelism():
    from brainattn.encoders.distributed import DistContext
    from brainattn.encoders.training import _use_graph

    cuda0 = torch.device("cuda", 0)
    ready = DistContext(0, 2, 0, "nccl", cuda0, graphs=True)
    off = DistContext(0, 2, 0, "nccl", cuda0, graphs=False)
    gloo = DistContext(0, 2, 0, "gloo", torch.device("cpu"))
    # auto: on for CUDA, with one process or an NCCL group started graph-ready; else eager
    assert _use_graph(None, "cuda", None) and _use_graph(None, "cuda", ready)
    assert not _use_graph(None, "cuda", off) and not _use_graph(None, "cpu", gloo)
    assert not _use_graph(False, "cuda", ready)
    assert _use_graph(True, "cuda", ready)
    with pytest.raises(ConfigError, match=r"cannot capture its all-reduce with the gloo backend"):
        _use_graph(True, "cuda", gloo)
    with pytest.raises(ConfigError, match=r"async error handling on|NCCL .* needs >="):
        _use_graph(True, "cuda", off)
