"""Procedural surface textures and their sampling.

Every box face (room walls included) gets its own texture image, generated from the seed and
sized in metres (texels per metre fixed per surface family), so texture density is physical:
a wall 8 m away looks 4x finer than one 2 m away, as in a real room.

Textures are built from non-periodic ingredients (value noise at several scales, random rotated
rectangles, ellipses and strokes) because periodic patterns alias and make KLT lock onto the
wrong period. Sampling is bilinear with a small mip pyramid (levels blended by the pixel's
footprint on the surface), so distant surfaces do not shimmer from frame to frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIP_LEVELS = 4

# Texels per metre per surface family. Objects are denser because they are small and often
# seen close; the room is coarser to keep memory and generation time low (~3.5 M texels).
DENSITY = {"room": 100.0, "furniture": 120.0, "object": 200.0}


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field with correlation length ``cell`` texels, ~unit variance, (h, w)."""
    cell = max(cell, 1.0)
    gh, gw = int(np.ceil(h / cell)) + 4, int(np.ceil(w / cell)) + 4
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    oy = int(rng.integers(0, max(1, up.shape[0] - h - int(cell)))) + int(cell)
    ox = int(rng.integers(0, max(1, up.shape[1] - w - int(cell)))) + int(cell)
    out = up[oy:oy + h, ox:ox + w]
    if out.shape != (h, w):                       # tiny tiles: pad by edge replication
        out = np.pad(out, ((0, h - out.shape[0]), (0, w - out.shape[1])), mode="edge")
    return out


def _jitter_color(rng, base, spread: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(base) * rng.uniform(1 - spread, 1 + spread, 3), 0.0, 1.0)
    return tuple(float(x) for x in c)


def _draw_shapes(rng, img: np.ndarray, density: float, area_m2: float, per_m2: float,
                 size_range_m: tuple[float, float], colors) -> None:
    """Random rotated rectangles, ellipses and strokes drawn into img (float32 HxWx3) in place."""
    h, w = img.shape[:2]
    n = rng.poisson(per_m2 * area_m2)
    lo, hi = np.log(size_range_m[0] * density), np.log(size_range_m[1] * density)
    for _ in range(n):
        kind = rng.random()
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        a, b = np.exp(rng.uniform(lo, hi)), np.exp(rng.uniform(lo, hi))
        ang = rng.uniform(0, 180)
        color = colors(rng)
        if kind < 0.5:                              # rectangle: strong corners for GFTT
            box = cv2.boxPoints(((cx, cy), (a, b), ang))
            cv2.fillConvexPoly(img, np.round(box * 16).astype(np.int32), color,
                               lineType=cv2.LINE_AA, shift=4)
        elif kind < 0.8:                            # blob
            cv2.ellipse(img, (int(cx * 16), int(cy * 16)), (int(a * 8) + 8, int(b * 8) + 8),
                        ang, 0, 360, color, -1, cv2.LINE_AA, 4)
        else:                                       # stroke (poly-line with 2-4 points)
            k = int(rng.integers(2, 5))
            pts = np.cumsum(rng.normal(0, a, (k, 2)), axis=0) + (cx, cy)
            thick = max(1, int(round(rng.uniform(0.004, 0.02) * density)))
            cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, color, thick,
                          cv2.LINE_AA, 4)


def make_texture(rng: np.random.Generator, size_m: tuple[float, float], family: str,
                 base: tuple[float, float, float], style: str) -> np.ndarray:
    """Texture for a face of size_m = (width along s, height along t) metres -> float32 HxWx3.

    family: "room", "furniture" or "object"; style: "rich" (feature-rich) or "low" (mostly flat
    with sparse features).
    """
    density = DENSITY[family]
    w = max(2, int(np.ceil(size_m[0] * density)))
    h = max(2, int(np.ceil(size_m[1] * density)))
    area = size_m[0] * size_m[1]
    base = np.asarray(base, dtype=np.float32)
    if style == "low":
        # Nearly uniform albedo: a very faint large-scale shade, then a handful of marks.
        lum = 1.0 + 0.03 * _value_noise(rng, h, w, 1.5 * density)
        img = (lum[..., None] * base).astype(np.float32)
        per_m2 = 3.0 if family == "object" else 0.25
        _draw_shapes(rng, img, density, area, per_m2, (0.05, 0.25),
                     lambda r: _jitter_color(r, base, 0.6))
        return np.clip(img, 0.0, 1.0)
    if style != "rich":
        raise ValueError(f"unknown texture style {style!r}")

    # Multi-scale luminance noise (metres -> texels), weights falling with scale; a faint
    # colour tint so neighbouring regions are not all the same hue.
    lum = np.ones((h, w), np.float32)
    for scale_m, weight in ((1.2, 0.10), (0.3, 0.08), (0.08, 0.07), (0.02, 0.05)):
        lum += weight * _value_noise(rng, h, w, scale_m * density)
    tint = np.stack([_value_noise(rng, h, w, 0.6 * density) for _ in range(3)], -1)
    img = (lum[..., None] * base * (1.0 + 0.04 * tint)).astype(np.float32)

    if family == "object":
        # Saturated colours, black/white marks and dense small shapes: clearly not a wall.
        def colors(r):
            pick = r.random()
            if pick < 0.3:
                return (0.05, 0.05, 0.05)
            if pick < 0.55:
                return (0.95, 0.95, 0.9)
            return tuple(float(x) for x in r.uniform(0.05, 1.0, 3))
        _draw_shapes(rng, img, density, area, 90.0, (0.015, 0.12), colors)
    else:
        def colors(r):     # mostly lighter/darker shades of the surface colour
            return _jitter_color(r, base * r.uniform(0.45, 1.25), 0.12)
        _draw_shapes(rng, img, density, area, 14.0, (0.03, 0.5), colors)
        # A second, darker sparse set of strokes/blobs so every square metre has corners.
        _draw_shapes(rng, img, density, area, 6.0, (0.02, 0.12),
                     lambda r: tuple(float(x) for x in base * r.uniform(0.15, 0.5)))
    return np.clip(img, 0.0, 1.0)


@dataclass
class TextureAtlas:
    """All face textures and their mip levels packed into one flat uint32 (0x00BBGGRR) array,
    so that sampling is a single gather per tap for every pixel of the frame."""
    texels: np.ndarray          # (M,) uint32, RGB packed little-endian (byte 0 = R)
    offset: np.ndarray          # (T * L,) int64 start of tile/level in texels
    width: np.ndarray           # (T * L,) int64
    height: np.ndarray          # (T * L,) int64
    scale_s: np.ndarray         # (T * L,) float64 texels per metre along s
    scale_t: np.ndarray         # (T * L,) float64 texels per metre along t
    levels: int

    @staticmethod
    def build(images: list[np.ndarray], sizes_m: list[tuple[float, float]],
              levels: int = MIP_LEVELS) -> "TextureAtlas":
        chunks, offset, width, height, ss, st = [], [], [], [], [], []
        pos = 0
        for img, (sw, sh) in zip(images, sizes_m):
            level = img
            for _ in range(levels):
                h, w = level.shape[:2]
                rgb8 = np.clip(np.round(level * 255.0), 0, 255).astype(np.uint8)
                packed = np.zeros((h, w, 4), np.uint8)
                packed[..., :3] = rgb8
                chunks.append(packed.reshape(-1).view(np.uint32))
                offset.append(pos)
                width.append(w)
                height.append(h)
                ss.append(w / sw)
                st.append(h / sh)
                pos += h * w
                if min(h, w) >= 4:                   # Gaussian-prefiltered halving
                    level = cv2.pyrDown(level)
        return TextureAtlas(np.concatenate(chunks), np.array(offset, np.int64),
                            np.array(width, np.int64), np.array(height, np.int64),
                            np.array(ss), np.array(st), levels)

    def _bilinear(self, idx: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        w, h = self.width[idx], self.height[idx]
        # Texel centres at (i + 0.5) / scale; clamp to the tile so no tap leaks into a neighbour.
        x = np.clip(s * self.scale_s[idx] - 0.5, 0.0, w - 1.0)
        y = np.clip(t * self.scale_t[idx] - 0.5, 0.0, h - 1.0)
        x0 = np.minimum(x.astype(np.int64), w - 2)
        y0 = np.minimum(y.astype(np.int64), h - 2)
        fx = (x - x0).astype(np.float32)[:, None]
        fy = (y - y0).astype(np.float32)[:, None]
        base = self.offset[idx] + y0 * w + x0
        tex = self.texels

        def tap(i):
            return tex[i].view(np.uint8).reshape(-1, 4)[:, :3].astype(np.float32)
        top = tap(base) * (1 - fx) + tap(base + 1) * fx
        bottom = tap(base + w) * (1 - fx) + tap(base + w + 1) * fx
        return top * (1 - fy) + bottom * fy

    def sample(self, tile: np.ndarray, s: np.ndarray, t: np.ndarray,
               footprint_m: np.ndarray) -> np.ndarray:
        """Colour (N, 3) float32 in [0, 255] at face coordinates (s, t) metres of tiles (N,),
        with a pixel footprint (metres on the surface) that selects the mip level."""
        L = self.levels
        lvl = np.log2(np.maximum(footprint_m * self.scale_s[tile * L], 1e-6))
        lvl = np.clip(lvl, 0.0, L - 1.0)
        l0 = np.minimum(lvl.astype(np.int64), L - 2)
        frac = (lvl - l0).astype(np.float32)[:, None]
        c0 = self._bilinear(tile * L + l0, s, t)
        c1 = self._bilinear(tile * L + l0 + 1, s, t)
        return c0 + (c1 - c0) * frac
