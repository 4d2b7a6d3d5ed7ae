"""Stimuli: log-Gabor spectra, textures, gratings, OT interpolation, PNG files."""

import numpy as np
import pytest

from brainattn.errors import ConfigError
from brainattn.psychophysics.stimuli import (
    gaussian_texture,
    grating,
    interpolate_textures,
    log_gabor_spectrum,
    ot_interpolation,
    save_png,
)


def _radial_energy(S, ppu):
    n = S.shape[0]
    fx = np.fft.fftfreq(n, d=1.0 / ppu)
    f = np.hypot(*np.meshgrid(fx, fx, indexing="xy"))
    return f.ravel(), S.ravel()


def test_log_gabor_radial_distribution_is_the_fisher_model():
    # energy-weighted log frequency: mean log f0 + sigma^2, sd sigma = b sqrt(ln2/8)
    b, f0 = 1.0, 12.0
    S = log_gabor_spectrum(512, f0, b, orientation_bandwidth=None)
    assert S.sum() == pytest.approx(1.0) and S[0, 0] == 0
    f, w = _radial_energy(S, 512)
    keep = f > 0
    lf = np.log(f[keep])
    mean = np.sum(w[keep] * lf)
    sd = np.sqrt(np.sum(w[keep] * (lf - mean) ** 2))
    sig = b * np.sqrt(np.log(2) / 8)
    assert mean == pytest.approx(np.log(f0) + sig**2, abs=0.01)
    assert sd == pytest.approx(sig, rel=0.03)


def test_orientation_energy_and_symmetry():
    S = log_gabor_spectrum(128, 10, 1.0, orientation=30, orientation_bandwidth=8)
    # real textures need a point-symmetric spectrum S(-xi) = S(xi)
    np.testing.assert_allclose(S, np.roll(np.flip(S), 1, axis=(0, 1)), atol=1e-15)
    fx = np.fft.fftfreq(128)
    FX, FY = np.meshgrid(fx, fx, indexing="xy")
    th = np.rad2deg(np.arctan2(FY, FX)) % 180
    mean_dir = np.rad2deg(np.angle(np.sum(S * np.exp(2j * np.deg2rad(th))))) / 2 % 180
    assert mean_dir == pytest.approx(30, abs=0.5)


def test_texture_luminance_contrast_and_seed():
    a = gaussian_texture(128, 8, 1.0, 0, 10, contrast=0.2, seed=3)
    b = gaussian_texture(128, 8, 1.0, 0, 10, contrast=0.2, seed=3)
    c = gaussian_texture(128, 8, 1.0, 0, 10, contrast=0.2, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (128, 128) and a.min() >= 0 and a.max() <= 1
    assert a.mean() == pytest.approx(0.5, abs=1e-3)
    assert a.std() / a.mean() == pytest.approx(0.2, rel=0.02)
    # vertical stripes (orientation 0): luminance varies along x, not along y
    gx = np.abs(np.diff(a, axis=1)).mean()
    gy = np.abs(np.diff(a, axis=0)).mean()
    assert gx > 3 * gy


def test_grating_frequency_orientation_contrast():
    g = grating(64, frequency=5, orientation=90, contrast=0.6)
    assert g.max() == pytest.approx(0.8, abs=1e-3) and g.min() == pytest.approx(0.2, abs=1e-3)
    F = np.abs(np.fft.fft2(g - g.mean()))
    ky, kx = np.unravel_index(np.argmax(F), F.shape)
    assert (kx, min(ky, 64 - ky)) == (0, 5)  # 90 deg: 5 cycles along y
    with pytest.raises(ConfigError, match="frequency"):
        grating(64, frequency=40)


def test_ot_interpolation_endpoints_and_spectra():
    S0 = log_gabor_spectrum(64, 4, 1.0, 0, 10)
    S1 = log_gabor_spectrum(64, 12, 1.0, 90, 10)
    X = ot_interpolation(S0, S1, [0.0, 0.5, 1.0], seed=2)
    W = np.fft.fft2(np.random.default_rng(2).standard_normal((64, 64)))
    np.testing.assert_allclose(X[0], np.fft.ifft2(np.sqrt(S0) * W).real, atol=1e-12)
    np.testing.assert_allclose(X[2], np.fft.ifft2(np.sqrt(S1) * W).real, atol=1e-12)
    # McCann interpolant: x_t = ((1 - t) I + t T) x_0 is linear in t with the same noise
    np.testing.assert_allclose(X[1], 0.5 * (X[0] + X[2]), atol=1e-12)
    with pytest.raises(ConfigError, match="t: expected values in"):
        ot_interpolation(S0, S1, [1.5])


def test_interpolate_textures_from_images_keeps_means():
    a = gaussian_texture(64, 6, 1.0, 0, 10, contrast=0.1, seed=0)
    b = gaussian_texture(64, 12, 1.0, 90, 10, contrast=0.1, seed=1) * 0.5 + 0.1
    frames = interpolate_textures(a, b, np.linspace(0, 1, 5), seed=0)
    assert frames.shape == (5, 64, 64)
    np.testing.assert_allclose(frames.mean(axis=(1, 2)), np.linspace(a.mean(), b.mean(), 5), atol=0.01)
    # the end frames have the power of the example images
    assert frames[0].std() == pytest.approx(a.std(), rel=0.2)
    assert frames[-1].std() == pytest.approx(b.std(), rel=0.2)


def test_png_roundtrip(tmp_path):
    from PIL import Image

    g = grating(32, 4)
    p = save_png(g, tmp_path / "g.png")
    back = np.asarray(Image.open(p), dtype=float) / 255
    np.testing.assert_allclose(back, g, atol=0.5 / 255 + 1e-9)
    with pytest.raises(ConfigError):
        save_png(np.zeros((2, 2, 2)), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
