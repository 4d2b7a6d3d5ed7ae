"""Procedural stimulus images for the synthetic visual cortex.

Each image is a textured background (multi-octave colour noise under a smooth contrast
envelope, so local contrast varies across the image) with 0-3 objects of four categories, drawn
procedurally so that each category has its own local structure:

- ``faces``: a skin-coloured vertical oval with two dark eye blobs, brows and a mouth bar;
- ``bodies``: a stick figure of thick, oriented limb bars around a torso, small round head;
- ``places``: a rectilinear scene -- sky over a horizon, buildings with grids of windows;
- ``words``: a light page with rows of small dark glyph strokes.

Objects are described in normalised image coordinates (x to the right, y downwards, both in
[0, 1]): centre ``(x, y)``, ``size`` (the object's nominal diameter as a fraction of the image
width) and ``box`` ``(x0, y0, x1, y1)``, the extent of what was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("faces", "bodies", "places", "words")
N_OBJECT_PROBS = (0.1, 0.4, 0.3, 0.2)  # P(0, 1, 2, 3 objects)
SIZE_RANGE = (0.15, 0.5)  # object diameter, fraction of the image width (log-uniform)
ENERGY_GRID = 56  # contrast-energy map resolution (cells per side)


@dataclass
class SynthObject:
    category: str
    x: float
    y: float
    size: float
    box: tuple[float, float, float, float]


def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights (cell centres aligned)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


_UP_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _up(n_in: int, n_out: int) -> np.ndarray:
    key = (n_in, n_out)
    if key not in _UP_CACHE:
        _UP_CACHE[key] = _upsample_matrix(n_in, n_out).astype(np.float32)
    return _UP_CACHE[key]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1]: colour noise texture with a varying contrast envelope."""
    base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
    fine = 64
    tex64 = np.zeros((3, fine, fine), dtype=np.float32)
    octaves = [4, 8, 16, 32, 64]
    weights = rng.dirichlet(np.ones(len(octaves)) * 0.7)
    for r, w in zip(octaves, weights, strict=True):
        noise = rng.standard_normal((3, r, r)).astype(np.float32)
        noise[1:] = 0.6 * noise[:1] + 0.4 * noise[1:]  # mostly luminance
        if r == fine:
            tex64 += w * noise
        else:
            u = _up(r, fine)
            tex64 += w * (u @ noise @ u.T)
    u = _up(fine, size)
    tex = (u @ tex64 @ u.T).transpose(1, 2, 0)  # (size, size, 3)
    tex /= tex.std() + 1e-8
    env_u = _up(3, size)
    env = np.exp(env_u @ rng.normal(0, 0.8, size=(3, 3)).astype(np.float32) @ env_u.T)[..., None]
    contrast = np.float32(np.exp(rng.uniform(np.log(0.02), np.log(0.22))))
    return np.clip(base + contrast * env * tex, 0, 1)


def _rgb(rng: np.random.Generator, lo=0, hi=255) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def _draw_face(d: ImageDraw.ImageDraw, rng, cx, cy, s):
    skin = [(224, 172, 140), (198, 134, 96), (141, 85, 56), (240, 200, 170), (170, 110, 80)]
    col = np.array(skin[int(rng.integers(len(skin)))]) + rng.integers(-15, 16, size=3)
    col = tuple(int(c) for c in np.clip(col, 0, 255))
    w, h = 0.75 * s, s
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    hair = _rgb(rng, 10, 90)
    if rng.random() < 0.7:  # hair cap behind the face
        d.ellipse((cx - 0.52 * w, cy - 0.56 * h, cx + 0.52 * w, cy + 0.1 * h), fill=hair)
    d.ellipse(box, fill=col)
    er = 0.065 * s
    dark = (25, 20, 20)
    for sx in (-1, 1):
        ex, ey = cx + sx * 0.18 * s, cy - 0.1 * s
        d.ellipse((ex - 1.4 * er, ey - 0.9 * er, ex + 1.4 * er, ey + 0.9 * er), fill=(245, 245, 240))
        d.ellipse((ex - er * 0.8, ey - er * 0.8, ex + er * 0.8, ey + er * 0.8), fill=dark)
        d.line((ex - 1.5 * er, ey - 2.2 * er, ex + 1.5 * er, ey - 2.4 * er), fill=hair,
               width=max(1, int(0.03 * s)))
    d.line((cx, cy - 0.02 * s, cx - 0.03 * s, cy + 0.1 * s), fill=dark, width=max(1, int(0.02 * s)))
    mw = rng.uniform(0.22, 0.34) * s
    d.ellipse((cx - mw / 2, cy + 0.2 * s, cx + mw / 2, cy + 0.27 * s), fill=(120, 30, 35))
    return box


def _draw_body(d: ImageDraw.ImageDraw, rng, cx, cy, s):
    cloth = _rgb(rng, 30, 230)
    skin = (200, 150, 120)
    pts = []
    head_r = 0.09 * s
    neck = (cx, cy - 0.3 * s)
    hip = (cx + rng.uniform(-0.05, 0.05) * s, cy + 0.08 * s)
    tw = max(2, int(0.13 * s))
    lw = max(2, int(0.065 * s))
    d.line((*neck, *hip), fill=cloth, width=tw)
    pts += [neck, hip]
    for sx in (-1, 1):  # arms
        a1 = np.deg2rad(rng.uniform(20, 160)) * sx
        elbow = (neck[0] + sx * 0.05 * s + np.sin(a1) * 0.2 * s, neck[1] + 0.03 * s + np.cos(a1) * 0.2 * s)
        a2 = a1 + np.deg2rad(rng.uniform(-60, 60))
        hand = (elbow[0] + np.sin(a2) * 0.18 * s, elbow[1] + np.cos(a2) * 0.18 * s)
        d.line((neck[0] + sx * 0.05 * s, neck[1] + 0.03 * s, *elbow), fill=cloth, width=lw)
        d.line((*elbow, *hand), fill=skin, width=max(1, lw - 1))
        pts += [elbow, hand]
    leg_col = _rgb(rng, 20, 120)
    for sx in (-1, 1):  # legs
        a = np.deg2rad(rng.uniform(0, 35)) * sx
        knee = (hip[0] + np.sin(a) * 0.2 * s, hip[1] + np.cos(a) * 0.2 * s)
        a2 = a + np.deg2rad(rng.uniform(-25, 25))
        foot = (knee[0] + np.sin(a2) * 0.2 * s, knee[1] + np.cos(a2) * 0.2 * s)
        d.line((*hip, *knee), fill=leg_col, width=lw + 1)
        d.line((*knee, *foot), fill=leg_col, width=lw + 1)
        pts += [knee, foot]
    head = (neck[0], neck[1] - head_r * 1.1)
    d.ellipse((head[0] - head_r, head[1] - head_r, head[0] + head_r, head[1] + head_r), fill=skin)
    pts += [(head[0], head[1] - head_r)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    pad = lw / 2
    return (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)


def _draw_place(d: ImageDraw.ImageDraw, rng, cx, cy, s):
    w, h = s, 0.8 * s
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    horizon = y0 + rng.uniform(0.35, 0.65) * h
    sky = (int(rng.integers(110, 180)), int(rng.integers(160, 210)), int(rng.integers(215, 255)))
    ground = _rgb(rng, 40, 140)
    d.rectangle((x0, y0, x1, horizon), fill=sky)
    d.rectangle((x0, horizon, x1, y1), fill=ground)
    # perspective-free street lines on the ground
    for k in range(1, 3):
        yy = horizon + k * (y1 - horizon) / 3
        d.line((x0, yy, x1, yy), fill=tuple(int(c * 0.7) for c in ground), width=1)
    n_b = int(rng.integers(2, 5))
    edges = np.sort(rng.uniform(x0, x1, size=n_b - 1))
    lefts = np.concatenate([[x0], edges])
    rights = np.concatenate([edges, [x1]])
    for bl, br in zip(lefts, rights, strict=True):
        if br - bl < 4:
            continue
        top = y0 + rng.uniform(0.02, 0.3) * h
        col = tuple(int(c) for c in rng.integers(90, 200) + rng.integers(-20, 20, size=3))
        d.rectangle((bl + 1, top, br - 1, horizon), fill=col)
        win = (40, 40, 60) if rng.random() < 0.5 else (250, 230, 150)
        nx = max(1, int((br - bl) / (0.09 * s)))
        ny = max(1, int((horizon - top) / (0.1 * s)))
        for i in range(nx):
            for j in range(ny):
                wx = bl + (i + 0.3) * (br - bl) / nx
                wy = top + (j + 0.3) * (horizon - top) / ny
                d.rectangle((wx, wy, wx + 0.4 * (br - bl) / nx, wy + 0.4 * (horizon - top) / ny), fill=win)
    return (x0, y0, x1, y1)


_GLYPH_STROKES = [
    ((0.5, 0.0), (0.5, 1.0)), ((0.0, 0.5), (1.0, 0.5)), ((0.0, 0.0), (1.0, 1.0)),
    ((1.0, 0.0), (0.0, 1.0)), ((0.0, 0.0), (1.0, 0.0)), ((0.0, 1.0), (1.0, 1.0)),
    ((0.0, 0.0), (0.0, 1.0)), ((1.0, 0.0), (1.0, 1.0)),
]


def _draw_word(d: ImageDraw.ImageDraw, rng, cx, cy, s):
    w, h = s, 0.5 * s
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    page = tuple(int(v) for v in rng.integers(225, 256, size=3))
    ink = (int(rng.integers(0, 50)),) * 3
    d.rectangle((x0, y0, x1, y1), fill=page)
    n_rows = int(rng.integers(1, 4))
    gh = 0.8 * h / (n_rows * 1.5)
    gw = gh * 0.7
    width = max(1, int(gh / 6))
    for r in range(n_rows):
        gy = y0 + 0.1 * h + r * 1.5 * gh + 0.25 * gh
        gx = x0 + 0.06 * w
        while gx + gw < x1 - 0.06 * w:
            if rng.random() < 0.15:  # word gap
                gx += gw
                continue
            for k in rng.choice(len(_GLYPH_STROKES), size=int(rng.integers(2, 4)), replace=False):
                (ax, ay), (bx, by) = _GLYPH_STROKES[k]
                d.line((gx + ax * gw, gy + ay * gh, gx + bx * gw, gy + by * gh), fill=ink, width=width)
            gx += gw * 1.35
    return (x0, y0, x1, y1)


_DRAW = {"faces": _draw_face, "bodies": _draw_body, "places": _draw_place, "words": _draw_word}
_ASPECT = {"faces": (0.75, 1.0), "bodies": (0.8, 1.05), "places": (1.0, 0.8), "words": (1.0, 0.5)}


def _overlaps(box, boxes, frac=0.25) -> bool:
    for b in boxes:
        ix = max(0.0, min(box[2], b[2]) - max(box[0], b[0]))
        iy = max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
        small = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
        if ix * iy > frac * small:
            return True
    return False


def sample_objects(rng: np.random.Generator) -> list[tuple[str, float, float, float]]:
    """Draw the object list of one image: (category, x, y, size), normalised, non-overlapping."""
    n = int(rng.choice(len(N_OBJECT_PROBS), p=N_OBJECT_PROBS))
    out, boxes = [], []
    for _ in range(n):
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        ax, ay = _ASPECT[cat]
        for _try in range(30):
            size = float(np.exp(rng.uniform(np.log(SIZE_RANGE[0]), np.log(SIZE_RANGE[1]))))
            hx, hy = ax * size / 2, ay * size / 2
            x = float(rng.uniform(hx, 1 - hx))
            y = float(rng.uniform(hy, 1 - hy))
            box = (x - hx, y - hy, x + hx, y + hy)
            if not _overlaps(box, boxes):
                out.append((cat, x, y, size))
                boxes.append(box)
                break
    return out


def render_image(seed, size: int = 224) -> tuple[np.ndarray, list[SynthObject]]:
    """Render one image from a seed (int or ``np.random.SeedSequence``).

    Returns the (size, size, 3) uint8 image and its objects (normalised coordinates).
    """
    rng = np.random.default_rng(seed)
    spec = sample_objects(rng)
    bg = _background(rng, size)
    img = Image.fromarray(np.round(bg * 255).astype(np.uint8), mode="RGB")
    d = ImageDraw.Draw(img)
    objects = []
    for cat, x, y, s in spec:
        box = _DRAW[cat](d, rng, x * size, y * size, s * size)
        nb = tuple(float(np.clip(v / size, 0.0, 1.0)) for v in box)
        objects.append(SynthObject(cat, x, y, s, nb))
    return np.asarray(img), objects


def contrast_energy(img: np.ndarray, grid: int = ENERGY_GRID) -> np.ndarray:
    """Local contrast energy on a ``grid x grid`` map (at most one cell per pixel), float32.

    Luminance minus its Gaussian blur (sigma 2 px: a band-pass around 1/8 cycles/px), squared,
    averaged in grid cells.
    """
    from scipy.ndimage import gaussian_filter

    lum = (img.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    band = lum - gaussian_filter(lum, 2.0, mode="reflect")
    e = band * band
    n = img.shape[0]
    grid = min(grid, n)
    cell = n // grid
    if cell * grid != n:  # area average over uneven cells
        m = np.zeros((grid, n), dtype=np.float32)
        m[(np.arange(n) * grid) // n, np.arange(n)] = 1.0
        m /= m.sum(axis=1, keepdims=True)
        return (m @ e @ m.T).astype(np.float32)
    return e.reshape(grid, cell, grid, cell).mean(axis=(1, 3)).astype(np.float32)


def chroma_energy(img: np.ndarray, grid: int = ENERGY_GRID) -> np.ndarray:
    """Local colour-opponent saturation on a ``grid x grid`` map, float32:
    ``|R - G| + |B - (R + G) / 2|`` (RGB in [0, 1]) averaged in grid cells -- the rectified
    opponent channels the embedded backbone's colour stage reads."""
    rgb = img.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    c = np.abs(r - g) + np.abs(b - (r + g) / 2)
    n = img.shape[0]
    grid = min(grid, n)
    cell = n // grid
    if cell * grid != n:
        m = np.zeros((grid, n), dtype=np.float32)
        m[(np.arange(n) * grid) // n, np.arange(n)] = 1.0
        m /= m.sum(axis=1, keepdims=True)
        return (m @ c @ m.T).astype(np.float32)
    return c.reshape(grid, cell, grid, cell).mean(axis=(1, 3)).astype(np.float32)
