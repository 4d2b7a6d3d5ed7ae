"""Stimuli for difference scaling: log-Gabor Gaussian textures, gratings, OT interpolation.

Images are float64 arrays ``(size, size)`` of luminance in [0, 1] (mean 0.5); spatial
frequencies are in cycles per *unit*, with ``pixels_per_unit`` pixels in a unit (default: the
image width is one unit, so frequencies are in cycles/image).  Orientations are in degrees
(0 = vertical stripes, i.e. energy along the horizontal frequency axis).

The texture spectrum matches :mod:`brainattn.psychophysics.fisher`: the radial frequency of the
energy is log-normal with mode ``sf_mode`` and octave bandwidth ``sf_bandwidth``; orientation
energy ``∝ exp(cos(2 (theta - theta0)) / (4 B^2))`` with ``B`` the orientation bandwidth.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from brainattn.errors import ConfigError

__all__ = [
    "log_gabor_spectrum",
    "gaussian_texture",
    "grating",
    "ot_interpolation",
    "interpolate_textures",
    "image_spectrum",
    "load_grey_image",
    "load_spectrum",
    "texture_pair",
    "to_luminance",
    "save_png",
]


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ConfigError(f"size: expected an integer >= 8 (pixels), got {size!r}")
    return int(size)


def log_gabor_spectrum(
    size: int = 256,
    sf_mode: float = 8.0,
    sf_bandwidth: float = 1.0,
    orientation: float = 0.0,
    orientation_bandwidth: float | None = None,
    pixels_per_unit: float | None = None,
) -> np.ndarray:
    """Power spectrum of a log-Gabor texture on the FFT grid, (size, size), summing to 1.

    Parameters
    ----------
    sf_mode : mode of the radial frequency distribution, cycles/unit (> 0).
    sf_bandwidth : octave bandwidth (FWHM of the log-normal, > 0).
    orientation : mean orientation, deg.
    orientation_bandwidth : deg (> 0), or None for an isotropic texture.
    """
    size = _check_size(size)
    ppu = float(size if pixels_per_unit is None else pixels_per_unit)
    if not (sf_mode > 0 and sf_bandwidth > 0 and ppu > 0):
        raise ConfigError("sf_mode, sf_bandwidth and pixels_per_unit must be positive")
    if sf_mode >= ppu / 2:
        raise ConfigError(f"sf_mode: {sf_mode} cycles/unit is above the Nyquist limit {ppu / 2:g}")
    fx = np.fft.fftfreq(size, d=1.0 / ppu)
    FX, FY = np.meshgrid(fx, fx, indexing="xy")
    f = np.hypot(FX, FY)
    f[0, 0] = 1.0
    sig = sf_bandwidth * np.sqrt(np.log(2.0) / 8.0)
    mu = np.log(sf_mode) + sig * sig
    radial = np.exp(-((np.log(f) - mu) ** 2) / (2 * sig * sig)) / f  # log-normal density in f
    S = radial / f  # energy per unit area of the frequency plane: divide by the circumference
    if orientation_bandwidth is not None:
        if not orientation_bandwidth > 0:
            raise ConfigError(f"orientation_bandwidth: expected > 0 deg or None, got {orientation_bandwidth!r}")
        theta = np.arctan2(FY, FX)
        kappa = 1.0 / (4.0 * np.deg2rad(orientation_bandwidth) ** 2)
        S = S * np.exp(kappa * (np.cos(2 * (theta - np.deg2rad(orientation))) - 1.0))
    S[0, 0] = 0.0
    # exact point symmetry S(-xi) = S(xi) (the Nyquist row/column has no mirror on the grid)
    S = 0.5 * (S + np.roll(np.flip(S), 1, axis=(0, 1)))
    total = S.sum()
    if not total > 0:
        raise ConfigError("log_gabor_spectrum: the spectrum has no power on this grid")
    return S / total


def to_luminance(x: np.ndarray, contrast: float = 0.2, mean: float = 0.5) -> np.ndarray:
    """Zero-mean field -> luminance with RMS contrast ``contrast`` around ``mean``, clipped to [0, 1]."""
    if not 0 <= contrast <= 1:
        raise ConfigError(f"contrast: expected a value in [0, 1], got {contrast!r}")
    x = np.asarray(x, dtype=float)
    sd = x.std(axis=(-2, -1), keepdims=True)
    return np.clip(mean * (1.0 + contrast * (x - x.mean(axis=(-2, -1), keepdims=True)) / np.where(sd > 0, sd, 1.0)), 0, 1)


def _white(size, seed):
    rng = np.random.default_rng(seed)
    return np.fft.fft2(rng.standard_normal((size, size)))


def gaussian_texture(
    size: int = 256,
    sf_mode: float = 8.0,
    sf_bandwidth: float = 1.0,
    orientation: float = 0.0,
    orientation_bandwidth: float | None = 10.0,
    contrast: float = 0.2,
    pixels_per_unit: float | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """A Gaussian random-field texture with a log-Gabor spectrum, luminance (size, size) in [0, 1].

    ``contrast`` is the RMS contrast (sd / mean); same ``seed`` -> same noise sample, so textures
    that differ in one parameter share their phase structure.
    """
    S = log_gabor_spectrum(size, sf_mode, sf_bandwidth, orientation, orientation_bandwidth, pixels_per_unit)
    x = np.fft.ifft2(_white(size, seed) * np.sqrt(S)).real
    return to_luminance(x, contrast)


def grating(
    size: int = 256,
    frequency: float = 8.0,
    orientation: float = 0.0,
    phase: float = 0.0,
    contrast: float = 0.5,
    pixels_per_unit: float | None = None,
) -> np.ndarray:
    """A sinusoidal grating, luminance (size, size) in [0, 1]; ``contrast`` is Michelson contrast,
    ``frequency`` in cycles/unit, ``orientation`` and ``phase`` in degrees."""
    size = _check_size(size)
    if not 0 <= contrast <= 1:
        raise ConfigError(f"contrast: expected a value in [0, 1], got {contrast!r}")
    ppu = float(size if pixels_per_unit is None else pixels_per_unit)
    if not frequency > 0 or frequency >= ppu / 2:
        raise ConfigError(f"frequency: expected 0 < frequency < {ppu / 2:g} cycles/unit, got {frequency!r}")
    c = np.arange(size) / ppu
    X, Y = np.meshgrid(c, c, indexing="xy")
    th = np.deg2rad(orientation)
    arg = 2 * np.pi * frequency * (X * np.cos(th) + Y * np.sin(th)) + np.deg2rad(phase)
    return 0.5 * (1.0 + contrast * np.cos(arg))


def ot_interpolation(spectrum0: np.ndarray, spectrum1: np.ndarray, t, *, seed: int | None = None,
                     contrast: float | None = None) -> np.ndarray:
    """Samples along the Gaussian optimal-transport path between two stationary textures.

    With one white-noise sample ``w``, ``x_t = F^-1(((1 - t) sqrt(S0) + t sqrt(S1)) F w)``: the
    McCann interpolant ``((1-t) I + t T) x_0`` with ``T = sqrt(S1 / S0)`` the OT map.

    Returns (n_t, size, size): zero-mean fields, or luminance if ``contrast`` is given (then
    every frame is scaled by the *same* factor, the RMS contrast of the t=0 frame).
    """
    S0 = np.asarray(spectrum0, dtype=float)
    S1 = np.asarray(spectrum1, dtype=float)
    if S0.shape != S1.shape or S0.ndim != 2 or S0.shape[0] != S0.shape[1]:
        raise ConfigError(f"spectra: expected two square arrays of one shape, got {S0.shape} and {S1.shape}")
    ts = np.atleast_1d(np.asarray(t, dtype=float))
    if np.any((ts < 0) | (ts > 1)):
        raise ConfigError(f"t: expected values in [0, 1], got {ts.tolist()}")
    W = _white(S0.shape[0], seed)
    a0, a1 = np.sqrt(np.clip(S0, 0, None)), np.sqrt(np.clip(S1, 0, None))
    X = np.stack([np.fft.ifft2(((1 - tv) * a0 + tv * a1) * W).real for tv in ts])
    if contrast is None:
        return X
    sd0 = X[0].std() if X[0].std() > 0 else 1.0
    return np.clip(0.5 * (1.0 + contrast * X / sd0), 0, 1)


def image_spectrum(image: np.ndarray) -> np.ndarray:
    """Power spectrum (periodogram) of a grey image's zero-mean field, (H, W) on the FFT grid.

    ``S = |F(x - mean x)|^2 / n_pixels``: its mean over frequencies is the image's pixel
    variance, and :func:`ot_interpolation` of ``S`` with itself draws fields of that variance.
    This is the Gaussian texture model of the image: its power spectrum with random phases.
    """
    im = np.asarray(image, dtype=float)
    if im.ndim != 2 or im.shape[0] != im.shape[1] or im.shape[0] < 8:
        raise ConfigError(f"image: expected a square grey image of at least 8x8 pixels, got shape {im.shape}")
    if not np.all(np.isfinite(im)):
        raise ConfigError("image: holds NaN or infinite values")
    return np.abs(np.fft.fft2(im - im.mean())) ** 2 / im.size


def interpolate_textures(image0: np.ndarray, image1: np.ndarray, t, *, seed: int | None = None) -> np.ndarray:
    """OT interpolation between the Gaussian models of two example images (luminance arrays).

    Each image's model is its mean luminance and its power spectrum (:func:`image_spectrum`);
    frames are drawn with one noise sample along the path, the mean interpolated linearly.
    Returns (n_t, H, W) luminance clipped to [0, 1].
    """
    im0 = np.asarray(image0, dtype=float)
    im1 = np.asarray(image1, dtype=float)
    if im0.shape != im1.shape:
        raise ConfigError(f"images: expected two square grey images of one shape, got {im0.shape} and {im1.shape}")
    S0, S1 = image_spectrum(im0), image_spectrum(im1)
    ts = np.atleast_1d(np.asarray(t, dtype=float))
    X = ot_interpolation(S0, S1, ts, seed=seed)
    means = (1 - ts) * im0.mean() + ts * im1.mean()
    return np.clip(X + means[:, None, None], 0, 1)


def load_grey_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as grey luminance in [0, 1], (H, W) float64 (colour is converted to L)."""
    from PIL import Image

    from brainattn.errors import DataError

    p = Path(path)
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("L"), dtype=float) / 255.0
    except FileNotFoundError as exc:
        raise DataError(f"image {p}: no such file") from exc
    except OSError as exc:
        raise DataError(f"image {p}: not a readable image ({exc})") from exc


def load_spectrum(path: str | os.PathLike) -> np.ndarray:
    """Read a power spectrum saved as a 2-d ``.npy`` array on the FFT grid (square, >= 0)."""
    from brainattn.errors import DataError
    from brainattn.io import load_npy

    S = load_npy(path)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or not np.issubdtype(S.dtype, np.number):
        raise DataError(f"{path}: expected a square 2-d numeric power spectrum, got shape {S.shape} ({S.dtype})")
    S = S.astype(float)
    if np.any(~np.isfinite(S)) or np.any(S < 0):
        raise DataError(f"{path}: a power spectrum must be finite and non-negative at every frequency")
    return S


def texture_pair(images=None, spectra=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Power spectra of the two end textures of an interpolation, from two image files or two
    ``.npy`` spectra (exactly one of the two pairs). Returns ``(S0, S1, images)`` with
    ``images`` the (2, H, W) grey images, or None when spectra were given."""
    from brainattn.errors import DataError

    if (images is None) == (spectra is None):
        raise ConfigError("give the two end textures as two images or as two power spectra, not both")
    if images is not None:
        ims = [load_grey_image(p) for p in images]
        if ims[0].shape != ims[1].shape:
            raise DataError(f"images {images[0]} and {images[1]}: sizes differ ({ims[0].shape} vs {ims[1].shape})")
        for p, im in zip(images, ims, strict=True):
            if im.shape[0] != im.shape[1] or im.shape[0] < 8:
                raise DataError(f"image {p}: expected a square image of at least 8x8 pixels, got {im.shape}")
        return image_spectrum(ims[0]), image_spectrum(ims[1]), np.stack(ims)
    S0, S1 = load_spectrum(spectra[0]), load_spectrum(spectra[1])
    if S0.shape != S1.shape:
        raise DataError(f"spectra {spectra[0]} and {spectra[1]}: shapes differ ({S0.shape} vs {S1.shape})")
    return S0, S1, None


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a luminance array in [0, 1] as an 8-bit grey PNG (atomically)."""
    from PIL import Image

    from brainattn.io import atomic_path

    a = np.asarray(image, dtype=float)
    if a.ndim != 2:
        raise ConfigError(f"image: expected a 2-d luminance array, got shape {a.shape}")
    img = Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8), mode="L")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
