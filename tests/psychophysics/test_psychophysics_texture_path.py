"""Texture path: Fisher information along the OT path between two textures, its predicted
scale, and its recovery from a simulated observer through the CLI."""

import numpy as np
import pytest

from brainattn.cli import main
from brainattn.errors import ConfigError
from brainattn.io import load_netcdf
from brainattn.psychophysics.fisher import fisher_bures_path, fisher_texture_path, predicted_scale
from brainattn.psychophysics.stimuli import gaussian_texture, image_spectrum, interpolate_textures

K = 10.0  # amplitude ratio of the contrast pair: S1 = K^2 S0 at every frequency
NOISE = 0.01


def _contrast_pair_scale(t, k=K, noise=NOISE):
    """Closed form for S0 = s (white), S1 = k^2 s: with u_t = (1 + t (k - 1)) sqrt(s) and the
    noise variance n = noise (1 + k^2) s / 2, sqrt(I) ∝ u_t u_t' / (u_t^2 + n), so
    psi(t) = log((u_t^2 + n) / (u_0^2 + n)) / log((u_1^2 + n) / (u_0^2 + n)), s cancelling."""
    n = noise * (1 + k * k) / 2
    u2 = (1 + t * (k - 1)) ** 2
    return np.log((u2 + n) / (1 + n)) / np.log((k * k + n) / (1 + n))


def test_contrast_pair_closed_form():
    s, n_f = 0.3, 50
    S0, S1 = np.full(n_f, s), np.full(n_f, K * K * s)
    t = np.linspace(0, 1, 13)
    u2 = (1 + t * (K - 1)) ** 2 * s
    n = NOISE * (1 + K * K) * s / 2
    expected = n_f * 2 * u2 * (K - 1) ** 2 * s / (u2 + n) ** 2
    np.testing.assert_allclose(fisher_texture_path(S0, S1, t, noise=NOISE), expected, rtol=1e-12)
    np.testing.assert_allclose(predicted_scale("texture-path", t, spectra=(S0, S1), noise=NOISE),
                               _contrast_pair_scale(t), atol=1e-5)
    # without noise: the Bures information of the spectra, a log scale in the amplitude
    np.testing.assert_allclose(fisher_texture_path(S0, S1, t), fisher_bures_path(0 * S0, S0, 0 * S1, S1, t),
                               rtol=1e-12)
    np.testing.assert_allclose(predicted_scale("texture-path", t, spectra=(S0, S1), noise=0),
                               np.log1p(t * (K - 1)) / np.log(K), atol=1e-5)


def test_gaussian_texture_pair_from_images():
    # a log-Gabor texture and its contrast-scaled copy: their periodograms differ by k^2 at
    # every frequency, so the path's noise-free scale is log(1 + t (k - 1)) / log k
    a = gaussian_texture(64, 6, 1.0, 30, 20, contrast=0.08, seed=2)
    k = 3.0
    b = 0.5 + k * (a - 0.5)
    t = np.linspace(0, 1, 13)
    S0, S1 = image_spectrum(a), image_spectrum(b)
    assert S0.mean() == pytest.approx(a.var()) and S0[0, 0] == pytest.approx(0, abs=1e-20)
    np.testing.assert_allclose(predicted_scale("texture-path", t, spectra=(S0, S1), noise=0),
                               np.log1p(t * (k - 1)) / np.log(k), atol=1e-4)
    frames = interpolate_textures(a, b, [0.0, 0.5, 1.0], seed=1)
    sd = frames.std(axis=(1, 2))
    assert sd[1] / sd[0] == pytest.approx((1 + k) / 2, rel=0.02) and sd[2] / sd[0] == pytest.approx(k, rel=0.02)


def test_texture_path_bad_input():
    with pytest.raises(ConfigError, match="noise"):
        fisher_texture_path(np.ones(4), np.ones(4), 0.5, noise=-1)
    with pytest.raises(ConfigError, match="non-negative"):
        fisher_texture_path(np.ones(4), -np.ones(4), 0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        predicted_scale("texture-path", [0, 2], spectra=(np.ones(4), np.ones(4)))


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_simulated_observer_scale_is_recovered(tmp_path, capsys):
    # spectra of the contrast pair; an observer whose scale is the path's integrated sqrt(I)
    # (constant noise on that scale = stimulus noise ∝ 1/sqrt(I)) answers the Vacher-Mamassian
    # design: 81 triads (gaps <= 3 steps) of 13 levels x 5 repeats
    S0 = np.full((16, 16), 0.3)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, S0)
    np.save(b, K * K * S0)
    t = np.linspace(0, 1, 13)
    psi = _contrast_pair_scale(t)
    trials = tmp_path / "trials.csv"
    assert main(["scale", "simulate", "--out", str(trials), "--levels", "13", "--design", "triad",
                 "--max-gap", "3", "--repeats", "5", "--range", "0,1", "--sigma", "0.05", "--seed", "4",
                 "--scale", "values:" + ",".join(f"{v:.6f}" for v in psi)]) == 0
    scores = {}
    for name, ends in (("right", [str(a), str(b)]), ("swapped", [str(b), str(a)])):
        out = tmp_path / name
        assert main(["scale", "fit", str(trials), "--bootstrap", "200", "--predict", "texture-path",
                     "--spectra", *ends, "--noise", str(NOISE), "--out", str(out)]) == 0
        ds = load_netcdf(out / "scale.nc")
        scores[name] = ds.attrs
    np.testing.assert_allclose(load_netcdf(tmp_path / "right" / "scale.nc")["predicted_scale"].values, psi,
                               atol=1e-4)
    right, swapped = scores["right"], scores["swapped"]
    assert right["area_match"] > 0.9 and right["area_match_upper"] > 0.95
    assert right["rmse"] < 0.04 and right["correlation"] > 0.99
    # the reversed path predicts the mirror image of the scale: clearly worse
    assert swapped["area_match_upper"] < right["area_match_lower"]
    capsys.readouterr()
    assert main(["scale", "fit", str(trials), "--predict", "texture-path", "--out", str(tmp_path / "x")]) == 2
    assert "--images" in _err(capsys)
    assert main(["scale", "fit", str(trials), "--predict", "mode-frequency", "--noise", "0.1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "texture-path" in _err(capsys)
    assert not (tmp_path / "x").exists()


def test_interpolate_and_predict_from_images(tmp_path, capsys):
    from PIL import Image

    from brainattn.psychophysics.stimuli import save_png, texture_pair

    A, B = tmp_path / "A.png", tmp_path / "B.png"
    save_png(gaussian_texture(32, 3, 1.0, 0, 15, seed=1), A)
    save_png(gaussian_texture(32, 8, 1.0, 90, 15, seed=2), B)
    out = tmp_path / "i"
    assert main(["stimuli", "interpolate", "--images", str(A), str(B), "--out", str(out)]) == 0
    frames = np.load(out / "stimuli.npy")
    assert frames.shape == (13, 32, 32) and (out / "frame_13.png").is_file()
    S0, S1, _ = texture_pair((A, B))
    np.testing.assert_allclose(np.load(out / "spectrum_start.npy"), S0)
    # the first frame is a sample of the first image's Gaussian model: its mean, its variance
    # (the mean power of the spectrum) up to the sampling error of 1,024 random phases
    a = np.asarray(Image.open(A), dtype=float) / 255
    assert frames[0].mean() == pytest.approx(a.mean(), abs=0.01)
    assert frames[0].var() == pytest.approx(S0.mean(), rel=0.25) and S0.mean() == pytest.approx(a.var())
    pred = tmp_path / "p"
    assert main(["scale", "predict", "--model", "texture-path", "--images", str(A), str(B),
                 "--out", str(pred)]) == 0
    via_spectra = tmp_path / "q"
    assert main(["scale", "predict", "--model", "texture-path", "--spectra", str(out / "spectrum_start.npy"),
                 str(out / "spectrum_end.npy"), "--out", str(via_spectra)]) == 0
    p, q = (load_netcdf(d / "predicted.nc") for d in (pred, via_spectra))
    np.testing.assert_allclose(p["predicted_scale"].values, q["predicted_scale"].values, atol=1e-12)
    np.testing.assert_allclose(p["predicted_scale"].values,
                               predicted_scale("texture-path", np.linspace(0, 1, 13), spectra=(S0, S1)), atol=1e-12)
    assert p.attrs["noise"] == 0.01 and p["stimulus"].values[-1] == 1.0
    capsys.readouterr()
    assert main(["stimuli", "interpolate", "--images", str(A), str(tmp_path / "none.png"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "no such file" in _err(capsys)
    assert main(["stimuli", "interpolate", "--images", str(A), str(B), "--sf-mode", "3,4",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--sf-mode" in _err(capsys)
    assert not (tmp_path / "bad").exists()
