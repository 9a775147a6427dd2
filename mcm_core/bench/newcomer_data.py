"""Synthetic RGB image families a newcomer might bring: not MNIST, varied sizes, colours, rotations, noise.

    images, labels, class_names = make_family("letters", [70, 70, 70, 70, 8, 8], seed=0)

Every family has 6 classes; by convention the first 4 are the common ones and the last 2 the rare
ones (`RARE`), so `DEFAULT_COUNTS` (4 x 70 + 2 x 8) is the user story of issue 21: a team's own
JPEGs with two rare classes. The images are generated with numpy and PIL only, deterministic
given the seed (and, for `letters`, the fonts `fc-list` reports), and every image goes through a
JPEG re-encoding as a real upload would.

Families:
- `letters`: capital letters in several system fonts, random colours and backgrounds, 64-200 px,
  rotations, noise (glyphs).
- `textures`: stripes, checks, dots, waves / rings, zigzag, at random orientation, scale, colours.
- `shapes`: patterned scenes: a circle, square, triangle, cross / star, crescent on a cluttered
  background (lines, blobs, gradients).
- `icons`: app-icon-like pictograms (house, tree, car, person / umbrella, key) on a rounded tile.
"""
from __future__ import annotations

import functools
import io
import math
import subprocess

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CLASSES: dict[str, tuple[str, ...]] = {
    "letters": ("A", "E", "H", "O", "K", "R"),
    "textures": ("stripes", "checks", "dots", "waves", "rings", "zigzag"),
    "shapes": ("circle", "square", "triangle", "cross", "star", "crescent"),
    "icons": ("house", "tree", "car", "person", "umbrella", "key"),
}
FAMILIES: tuple[str, ...] = tuple(CLASSES)
COMMON: tuple[int, ...] = (0, 1, 2, 3)
RARE: tuple[int, ...] = (4, 5)
DEFAULT_COUNTS: tuple[int, ...] = (70, 70, 70, 70, 8, 8)
MIN_SIZE, MAX_SIZE = 64, 200


def make_family(name: str, n_per_class: dict | list | tuple | None = None,
                seed: int = 0) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """`n_per_class` images of each class of family `name`, shuffled; -> (RGB images, labels, class names).

    `n_per_class`: a list of 6 counts in class order, or a dict {class name or index: count} (missing
    classes get 0); None = DEFAULT_COUNTS. Labels index `class_names`. The same arguments give the
    same images (a class's k-th image does not depend on the other classes' counts).
    """
    if name not in CLASSES:
        raise ValueError(f"unknown family {name!r}: expected one of {', '.join(FAMILIES)}")
    names = list(CLASSES[name])
    counts = _counts(n_per_class, names)
    draw = _DRAWERS[name]
    images: list[Image.Image] = []
    labels: list[int] = []
    family_key = FAMILIES.index(name)
    for k, n in enumerate(counts):
        for i in range(n):
            rng = np.random.default_rng([seed, family_key, k, i])
            images.append(_finish(rng, draw(rng, k)))
            labels.append(k)
    order = np.random.default_rng([seed, family_key, 99]).permutation(len(images))
    return [images[j] for j in order], np.asarray(labels, dtype=np.int64)[order], names


def _counts(n_per_class, names: list[str]) -> list[int]:
    if n_per_class is None:
        return list(DEFAULT_COUNTS)
    if isinstance(n_per_class, dict):
        counts = [0] * len(names)
        for key, n in n_per_class.items():
            k = names.index(key) if key in names else key
            if not isinstance(k, (int, np.integer)) or not 0 <= k < len(names):
                raise ValueError(f"unknown class {key!r}: expected one of {names} or an index 0-{len(names) - 1}")
            counts[int(k)] = int(n)
    else:
        counts = [int(n) for n in n_per_class]
        if len(counts) != len(names):
            raise ValueError(f"expected {len(names)} counts (one per class of {names}), got {len(counts)}")
    if any(n < 0 for n in counts):
        raise ValueError(f"counts must be >= 0, got {counts}")
    return counts


# ---------------------------------------------------------------------------------------------- common pieces

def _size(rng) -> tuple[int, int]:
    """(width, height) in [64, 200], mostly near square."""
    side = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    other = int(np.clip(side * rng.uniform(0.8, 1.25), MIN_SIZE, MAX_SIZE))
    return (side, other) if rng.random() < 0.5 else (other, side)


def _colour(rng) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _contrasting(rng, other: np.ndarray, min_diff: float = 70.0) -> np.ndarray:
    """A random colour whose luma differs from `other`'s by at least `min_diff` (else black or white)."""
    for _ in range(20):
        c = _colour(rng)
        if abs(_luma(c) - _luma(other)) >= min_diff:
            return c
    return np.zeros(3, np.float32) if _luma(other) > 127 else np.full(3, 255, np.float32)


def _background(rng, w: int, h: int, base: np.ndarray | None = None) -> np.ndarray:
    """(h, w, 3) float: a plain colour, a linear gradient or low-frequency blotches."""
    base = _colour(rng) if base is None else base
    kind = rng.integers(3)
    arr = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    if kind == 1:
        other = np.clip(base + rng.normal(0, 60, size=3), 0, 255)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx * np.cos(angle) + yy * np.sin(angle))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        arr = arr * (1 - t[..., None]) + other * t[..., None]
    elif kind == 2:
        grid = rng.normal(0, 35, size=(4, 4, 3)).astype(np.float32)
        blot = np.stack([np.asarray(Image.fromarray(grid[..., c]).resize((w, h), Image.BICUBIC)) for c in range(3)], -1)
        arr = arr + blot
    return np.clip(arr, 0, 255)


def _composite(arr: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32) / 255.0
    return arr * (1 - m) + colour * m


def _finish(rng, arr: np.ndarray) -> Image.Image:
    """Gaussian noise, an occasional blur, then a JPEG round trip at quality 40-95 -> RGB."""
    arr = arr + rng.normal(0, rng.uniform(0, 14), size=arr.shape)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(40, 96)))
    buffer.seek(0)
    out = Image.open(buffer)
    out.load()
    return out.convert("RGB")


def _rotated_mask(mask: Image.Image, angle: float) -> np.ndarray:
    return np.asarray(mask.rotate(angle, resample=Image.BICUBIC, expand=False))


# ---------------------------------------------------------------------------------------------- letters

@functools.lru_cache(maxsize=1)
def system_fonts() -> tuple[str, ...]:
    """Sorted TrueType/OpenType font files `fc-list` reports (without symbol/math fonts); () without fontconfig."""
    try:
        out = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    files = {line.split(":")[0].strip() for line in out.splitlines()}
    keep = [f for f in files if f.lower().endswith((".ttf", ".otf"))
            and not any(s in f.lower() for s in ("math", "symbol", "emoji", "dingbat"))]
    return tuple(sorted(keep))


@functools.lru_cache(maxsize=512)
def _font(path: str | None, size: int):
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


def _draw_letter(rng, k: int) -> np.ndarray:
    w, h = _size(rng)
    bg = _colour(rng)
    arr = _background(rng, w, h, bg)
    fonts = system_fonts()
    path = fonts[int(rng.integers(len(fonts)))] if fonts else None
    side = max(w, h) * 2
    size = int(min(w, h) * rng.uniform(0.45, 0.85))
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).text((side / 2, side / 2), CLASSES["letters"][k], fill=255, font=_font(path, size),
                              anchor="mm")
    rotated = _rotated_mask(mask, rng.uniform(-35, 35))
    dx = int(rng.uniform(-0.15, 0.15) * w)
    dy = int(rng.uniform(-0.15, 0.15) * h)
    top, left = side // 2 - h // 2 - dy, side // 2 - w // 2 - dx
    crop = rotated[top:top + h, left:left + w]
    return _composite(arr, crop, _contrasting(rng, bg))


# ---------------------------------------------------------------------------------------------- textures

def _draw_texture(rng, k: int) -> np.ndarray:
    w, h = _size(rng)
    c0 = _colour(rng)
    c1 = _contrasting(rng, c0, 50.0)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(8, 26) * (min(w, h) / 128) ** 0.5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx -= w / 2
    yy -= h / 2
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    phase = rng.uniform(0, period)
    name = CLASSES["textures"][k]
    if name == "stripes":
        m = np.sin(2 * np.pi * (u + phase) / period) > rng.uniform(-0.4, 0.4)
    elif name == "checks":
        m = (np.floor((u + phase) / period) + np.floor((v + phase) / period)) % 2 == 1
    elif name == "dots":
        r = rng.uniform(0.2, 0.4) * period
        du = (u + phase) % period - period / 2
        dv = (v + phase) % period - period / 2
        m = du ** 2 + dv ** 2 < r ** 2
    elif name == "waves":
        amp, wl = rng.uniform(0.2, 0.6) * period, rng.uniform(2.5, 5) * period
        m = np.sin(2 * np.pi * (u + amp * np.sin(2 * np.pi * v / wl) + phase) / period) > 0
    elif name == "rings":
        cx, cy = rng.uniform(-0.6, 0.6) * w, rng.uniform(-0.6, 0.6) * h
        m = np.sin(2 * np.pi * (np.hypot(xx - cx, yy - cy) + phase) / period) > 0
    else:  # zigzag: stripes bent into a triangle wave
        amp, wl = rng.uniform(0.3, 0.8) * period, rng.uniform(1.5, 3) * period
        tri = np.abs(((v / wl) % 1.0) * 2 - 1) * 2 - 1
        m = np.sin(2 * np.pi * (u + amp * tri + phase) / period) > 0
    mask = (m * 255).astype(np.uint8)
    if rng.random() < 0.5:
        mask = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))))
    arr = _background(rng, w, h, c0)
    shade = _background(rng, w, h, c1)
    m = mask[..., None].astype(np.float32) / 255.0
    return arr * (1 - m) + shade * m


# ---------------------------------------------------------------------------------------------- shapes

def _polygon(cx: float, cy: float, radius: float, n: int, angle: float, inner: float | None = None) -> list:
    points = []
    steps = n * 2 if inner else n
    for i in range(steps):
        r = radius if not inner or i % 2 == 0 else radius * inner
        a = angle + 2 * np.pi * i / steps
        points.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return points


def _shape_mask(name: str, w: int, h: int, rng) -> np.ndarray:
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    r = min(w, h) * rng.uniform(0.22, 0.4)
    cx = w / 2 + rng.uniform(-0.15, 0.15) * w
    cy = h / 2 + rng.uniform(-0.15, 0.15) * h
    angle = rng.uniform(0, 2 * np.pi)
    outline = rng.random() < 0.3
    width = max(2, int(r * 0.2))
    fill, line = (None, 255) if outline else (255, None)
    if name == "circle":
        ry = r * rng.uniform(0.85, 1.0)
        d.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=fill, outline=line, width=width)
    elif name in ("square", "triangle"):
        d.polygon(_polygon(cx, cy, r, 4 if name == "square" else 3, angle), fill=fill, outline=line, width=width)
    elif name == "cross":
        arm = r * rng.uniform(0.25, 0.4)
        for a in (angle, angle + np.pi / 2):
            ca, sa = np.cos(a), np.sin(a)
            corners = ((-r, -arm), (r, -arm), (r, arm), (-r, arm))
            pts = [(cx + ca * x - sa * y, cy + sa * x + ca * y) for x, y in corners]
            d.polygon(pts, fill=255)
    elif name == "star":
        d.polygon(_polygon(cx, cy, r, 5, angle, inner=rng.uniform(0.38, 0.5)), fill=fill, outline=line, width=width)
    else:  # crescent: a disc minus an offset disc
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = r * rng.uniform(0.35, 0.6)
        ox, oy = cx + off * np.cos(angle), cy + off * np.sin(angle)
        d.ellipse([ox - r * 0.9, oy - r * 0.9, ox + r * 0.9, oy + r * 0.9], fill=0)
    return np.asarray(mask)


def _clutter(rng, arr: np.ndarray) -> np.ndarray:
    """Lines and small blobs in random colours behind the object (never one of the classes' shapes at scale)."""
    h, w = arr.shape[:2]
    layer = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(layer)
    out = arr
    for _ in range(int(rng.integers(3, 10))):
        layer.paste(0, (0, 0, w, h))
        if rng.random() < 0.6:
            x0, y0, x1, y1 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)
            d.line([x0, y0, x1, y1], fill=255, width=int(rng.integers(1, 4)))
        else:
            s = min(w, h) * rng.uniform(0.03, 0.08)
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            d.ellipse([x - s, y - s * rng.uniform(0.5, 1.5), x + s, y + s], fill=255)
        out = _composite(out, np.asarray(layer) * rng.uniform(0.4, 0.9), _colour(rng))
    return out


def _draw_shape(rng, k: int) -> np.ndarray:
    w, h = _size(rng)
    bg = _colour(rng)
    arr = _clutter(rng, _background(rng, w, h, bg))
    mask = _shape_mask(CLASSES["shapes"][k], w, h, rng)
    return _composite(arr, mask, _contrasting(rng, bg))


# ---------------------------------------------------------------------------------------------- icons

def _icon(name: str, d: ImageDraw.ImageDraw, s: float, rng) -> None:
    """Draw pictogram `name` in white (255) on a canvas of side s (coordinates in units of s)."""
    def box(x0, y0, x1, y1):
        return [x0 * s, y0 * s, x1 * s, y1 * s]

    j = lambda: rng.uniform(-0.03, 0.03)  # noqa: E731  small shape jitter
    if name == "house":
        d.rectangle(box(0.28 + j(), 0.5, 0.72 + j(), 0.8), fill=255)
        d.polygon([(0.2 * s, 0.52 * s), (0.5 * s, (0.22 + j()) * s), (0.8 * s, 0.52 * s)], fill=255)
        d.rectangle(box(0.45, 0.63, 0.56, 0.8), fill=0)
    elif name == "tree":
        d.rectangle(box(0.45, 0.55, 0.55 + j(), 0.82), fill=255)
        d.ellipse(box(0.25 + j(), 0.18 + j(), 0.75, 0.62), fill=255)
    elif name == "car":
        d.rounded_rectangle(box(0.15, 0.48 + j(), 0.85, 0.66), radius=0.05 * s, fill=255)
        cabin = [(0.3, 0.49), (0.38 + j(), 0.34), (0.62 + j(), 0.34), (0.72, 0.49)]
        d.polygon([(x * s, y * s) for x, y in cabin], fill=255)
        for x in (0.3, 0.7):
            d.ellipse(box(x - 0.08, 0.6, x + 0.08, 0.76), fill=255)
            d.ellipse(box(x - 0.035, 0.645, x + 0.035, 0.715), fill=0)
    elif name == "person":
        d.ellipse(box(0.42, 0.16 + j(), 0.58, 0.32), fill=255)
        lw = int(max(2, 0.06 * s))
        d.line([(0.5 * s, 0.32 * s), (0.5 * s, 0.58 * s)], fill=255, width=lw)
        d.line([((0.3 + j()) * s, 0.42 * s), ((0.7 + j()) * s, 0.42 * s)], fill=255, width=lw)
        d.line([(0.5 * s, 0.58 * s), ((0.36 + j()) * s, 0.84 * s)], fill=255, width=lw)
        d.line([(0.5 * s, 0.58 * s), ((0.64 + j()) * s, 0.84 * s)], fill=255, width=lw)
    elif name == "umbrella":
        d.pieslice(box(0.18, 0.22 + j(), 0.82, 0.78), 180, 360, fill=255)
        lw = int(max(2, 0.045 * s))
        d.line([(0.5 * s, 0.5 * s), (0.5 * s, 0.78 * s)], fill=255, width=lw)
        d.arc(box(0.38, 0.7, 0.5, 0.84), 0, 180, fill=255, width=lw)
    else:  # key: a ring and a toothed shaft
        d.ellipse(box(0.16, 0.36 + j(), 0.42, 0.62), fill=255)
        d.ellipse(box(0.23, 0.43, 0.35, 0.55), fill=0)
        d.rectangle(box(0.4, 0.46, 0.84 + j(), 0.53), fill=255)
        d.rectangle(box(0.7, 0.53, 0.75, 0.62), fill=255)
        d.rectangle(box(0.78, 0.53, 0.83, 0.6 + j()), fill=255)


def _draw_icon(rng, k: int) -> np.ndarray:
    w, h = _size(rng)
    page = _colour(rng)
    arr = _background(rng, w, h, page)
    side = int(min(w, h) * rng.uniform(0.7, 0.95))
    tile_colour = _contrasting(rng, page, 40.0)
    tile = Image.new("L", (side * 2, side * 2), 0)
    ImageDraw.Draw(tile).rounded_rectangle([side // 2, side // 2, side * 3 // 2, side * 3 // 2],
                                           radius=side * rng.uniform(0.1, 0.3), fill=255)
    glyph = Image.new("L", (side, side), 0)
    _icon(CLASSES["icons"][k], ImageDraw.Draw(glyph), side, rng)
    glyph_big = Image.new("L", (side * 2, side * 2), 0)
    glyph_big.paste(glyph, (side // 2, side // 2))
    angle = rng.uniform(-25, 25)
    tile_m, glyph_m = _rotated_mask(tile, angle), _rotated_mask(glyph_big, angle)
    big_w, big_h = max(w, side * 2), max(h, side * 2)
    ox = int(big_w / 2 - side + rng.uniform(-0.08, 0.08) * w)
    oy = int(big_h / 2 - side + rng.uniform(-0.08, 0.08) * h)

    def place(m: np.ndarray) -> np.ndarray:
        canvas = np.zeros((big_h, big_w), np.uint8)
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + side * 2, big_h), min(ox + side * 2, big_w)
        canvas[y0:y1, x0:x1] = m[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        top, left = (big_h - h) // 2, (big_w - w) // 2
        return canvas[top:top + h, left:left + w]

    arr = _composite(arr, place(tile_m), tile_colour)
    return _composite(arr, place(glyph_m), _contrasting(rng, tile_colour))


_DRAWERS = {"letters": _draw_letter, "textures": _draw_texture, "shapes": _draw_shape, "icons": _draw_icon}
