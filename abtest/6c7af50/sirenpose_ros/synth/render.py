"""Vectorised CPU ray caster for box scenes: exact metric depth and object masks, textured RGB.

One ray per pixel centre, r(t) = o + t * R d with d = K^-1 (u, v, 1): d has z = 1 in the camera
frame, so the ray parameter t of a hit *is* its depth along the optical axis, with no
conversion (and no loss of exactness).

The room is the inside of an axis-aligned box (the ray leaves it through the nearest exit
plane); static and moving boxes are oriented boxes intersected with the slab test in each box's
own frame. Each box is only tested against the pixels inside the bounding rectangle of its
projected corners, which makes small objects nearly free.

Shading is a fixed albedo per face baked into the textures, so a surface point has the same
colour in every frame (brightness constancy, as KLT assumes) and no lighting changes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .scene import SceneSpec
from .texture import TextureAtlas, make_texture

# Face f of a box: axis f // 2, on the positive side if f is odd. Texture coordinates on a face
# with normal axis a run along axes (a + 1) % 3 (s) and (a + 2) % 3 (t).
ROOM_FACE_GAIN = (0.86, 0.92, 0.80, 0.88, 0.96, 0.78)     # x-, x+ (far wall), y-, y+, floor, ceiling
BOX_FACE_GAIN = (0.80, 0.90, 0.74, 0.86, 0.62, 1.00)      # bottom darkest, top brightest

# Box corners as signs of the half extents, and the 12 edges as pairs of corner indices
# (corners differing in exactly one sign).
_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)
                   if np.sum(_CORNER_SIGNS[i] != _CORNER_SIGNS[j]) == 1])


def default_intrinsics(width: int, height: int) -> np.ndarray:
    f = 0.8 * width
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def face_sizes(half: np.ndarray) -> list[tuple[float, float]]:
    """(s, t) extents in metres of the six faces of a box with half extents ``half``."""
    return [(2 * half[(f // 2 + 1) % 3], 2 * half[(f // 2 + 2) % 3]) for f in range(6)]


def build_atlas(spec: SceneSpec) -> TextureAtlas:
    """Textures of all faces: tile = 6 * box_index + face, box 0 = room, then static boxes, then
    objects. Each face has its own random stream (seed, preset, box, face), so adding an object
    leaves every other texture unchanged."""
    preset_key = zlib.crc32(spec.name.encode())
    room_half = (spec.room_hi - spec.room_lo) / 2.0
    entries = [("room", room_half, spec.wall_colors, ROOM_FACE_GAIN)]
    entries += [(b.kind, b.half, (b.color,) * 6, BOX_FACE_GAIN)
                for b in spec.static_boxes + spec.objects]
    images, sizes = [], []
    for bi, (family, half, colors, gains) in enumerate(entries):
        for f, size in enumerate(face_sizes(np.asarray(half))):
            rng = np.random.default_rng([spec.seed, preset_key, bi, f])
            img = make_texture(rng, size, family, colors[f], spec.texture)
            images.append(img * gains[f])
            sizes.append(size)
    return TextureAtlas.build(images, sizes)


def _face_coords(axis, origin, D, t, half):
    """Texture coordinates (s, tc) in metres on the face with normal ``axis`` hit at o + t D
    (box frame, component arrays D (3, n)), and the direction component along the normal."""
    p = [origin[i] + t * D[i] + half[i] for i in range(3)]           # corner-relative point
    is0, is1 = axis == 0, axis == 1
    s = np.where(is0, p[1], np.where(is1, p[2], p[0]))               # axis (a + 1) % 3
    tc = np.where(is0, p[2], np.where(is1, p[0], p[1]))              # axis (a + 2) % 3
    d_axis = np.where(is0, D[0], np.where(is1, D[1], D[2]))
    return s, tc, d_axis


@dataclass
class RenderedFrame:
    rgb: np.ndarray      # (H, W, 3) uint8
    depth: np.ndarray    # (H, W) float32, metres along the optical axis
    mask: np.ndarray     # (H, W) uint8, 0 = static, k = moving object k


class Renderer:
    """Renders a SceneSpec at a fixed resolution; textures are generated once here."""

    def __init__(self, spec: SceneSpec, width: int, height: int, K: np.ndarray | None = None):
        self.spec = spec
        self.width, self.height = int(width), int(height)
        self.K = default_intrinsics(width, height) if K is None else np.asarray(K, np.float64)
        if self.K[0, 1] != 0.0:
            raise ValueError("the renderer models pinhole intrinsics without skew (K[0, 1] = 0)")
        self.atlas = build_atlas(spec)
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        # Camera-frame ray directions with z = 1, one column per pixel (row-major pixel order).
        self.dirs_cam_T = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)]).reshape(3, -1)
        # Metres on the surface per pixel per metre of depth (for mip selection).
        self.pixel_angle = np.sqrt((self.dirs_cam_T ** 2).sum(axis=0) / (fx * fy))
        self.pixel_index = np.arange(width * height).reshape(height, width)
        self.room_center = (spec.room_lo + spec.room_hi) / 2.0
        self.room_half = (spec.room_hi - spec.room_lo) / 2.0
        # (half, motion, object id) for every box; index + 1 is its box index in the atlas.
        self.boxes = [(b.half, b.motion, 0) for b in spec.static_boxes]
        self.boxes += [(o.half, o.motion, k + 1) for k, o in enumerate(spec.objects)]

    def _pixel_rect(self, T_world_cam: np.ndarray, T_world_box: np.ndarray, half: np.ndarray):
        """Pixel indices whose rays may hit the box (None = all pixels).

        The box is clipped to the half-space z >= near (1 micrometre) in front of the camera
        (corners in front plus the points where box edges cross the plane z = near), and the
        bounding rectangle of the projection of that convex polytope is returned: no hit deeper
        than 1 micrometre is missed, including on boxes beside or partly behind the camera.
        """
        near = 1e-6
        corners = (_CORNER_SIGNS * half) @ T_world_box[:3, :3].T + T_world_box[:3, 3]
        cam = (corners - T_world_cam[:3, 3]) @ T_world_cam[:3, :3]       # R^T (X - o)
        z = cam[:, 2]
        front = z >= near
        if not front.any():
            return np.zeros(0, np.int64)        # behind the camera: no ray with depth > 0 hits
        pts = [cam[front]]
        za, zb = z[_EDGES[:, 0]], z[_EDGES[:, 1]]
        cross = (za >= near) != (zb >= near)
        if cross.any():
            a, b = cam[_EDGES[cross, 0]], cam[_EDGES[cross, 1]]
            w = ((near - za[cross]) / (zb[cross] - za[cross]))[:, None]
            pts.append(a + w * (b - a))
        pts = np.concatenate(pts)
        uv = pts[:, :2] / pts[:, 2:3] * self.K[[0, 1], [0, 1]] + self.K[[0, 1], [2, 2]]
        lo = np.floor(np.clip(uv.min(axis=0), -1e9, 1e9)) - 1
        hi = np.ceil(np.clip(uv.max(axis=0), -1e9, 1e9)) + 2
        u0, v0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        u1, v1 = min(int(hi[0]), self.width), min(int(hi[1]), self.height)
        if u0 >= u1 or v0 >= v1:
            return np.zeros(0, np.int64)
        if u1 - u0 == self.width and v1 - v0 == self.height:
            return None
        return self.pixel_index[v0:v1, u0:u1].ravel()

    def cast(self, T_world_cam: np.ndarray, t: float, dirs_cam: np.ndarray | None = None):
        """Nearest hit of every pixel-centre ray (or of the given rays) at scene time t.

        dirs_cam: optional (3, N) camera-frame ray directions scaled to z = 1 (e.g. through
        sub-pixel positions); default: the centres of all pixels, row-major.
        Returns (depth (N,), tile (N,), s (N,), tc (N,), cos (N,), obj (N,)): depth along the
        optical axis, texture tile, face coordinates in metres, cosine between ray and face
        normal, object id (0 = static). Arrays are kept per component (x, y, z separately):
        reductions over a length-3 axis are several times slower in NumPy.
        """
        R, o = T_world_cam[:3, :3], T_world_cam[:3, 3]
        grid = dirs_cam is None       # bounding-rectangle culling only applies to the pixel grid
        dc = self.dirs_cam_T if grid else np.asarray(dirs_cam, np.float64)   # (3, N)
        D = R @ dc                                                       # world directions (3, N)
        D[D == 0.0] = 1e-300      # exact zeros: make 1/D a huge finite number of the right sign
        inv_norm = 1.0 / np.sqrt(D[0] * D[0] + D[1] * D[1] + D[2] * D[2])

        # Room: the ray leaves through the nearest of its three exit planes.
        h = self.room_half
        o_r = o - self.room_center
        t0, t1, t2 = [(np.where(D[i] > 0, h[i], -h[i]) - o_r[i]) / D[i] for i in range(3)]
        depth = np.minimum(np.minimum(t0, t1), t2)
        axis = np.where((t0 <= t1) & (t0 <= t2), 0, np.where(t1 <= t2, 1, 2))
        s, tc, d_axis = _face_coords(axis, o_r, D, depth, h)
        tile = 2 * axis + (d_axis > 0)
        cos = np.abs(d_axis) * inv_norm
        obj = np.zeros(depth.shape, np.uint8)

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for bi, (half, motion, oid) in enumerate(self.boxes, start=1):
                Tb = motion.pose(t)
                idx = self._pixel_rect(T_world_cam, Tb, half) if grid else None
                if idx is not None and idx.size == 0:
                    continue
                Rb = Tb[:3, :3]
                dl = (Rb.T @ R) @ (dc if idx is None else dc[:, idx])    # box-frame directions
                dl[dl == 0.0] = 1e-300
                ol = Rb.T @ (o - Tb[:3, 3])
                ta = [(-half[i] - ol[i]) / dl[i] for i in range(3)]
                tb = [(half[i] - ol[i]) / dl[i] for i in range(3)]
                tn = [np.minimum(ta[i], tb[i]) for i in range(3)]
                t_in = np.maximum(np.maximum(tn[0], tn[1]), tn[2])
                t_out = np.minimum(np.minimum(np.maximum(ta[0], tb[0]), np.maximum(ta[1], tb[1])),
                                   np.maximum(ta[2], tb[2]))
                near = depth if idx is None else depth[idx]
                hit = np.flatnonzero((t_in <= t_out) & (t_in > 0) & (t_in < near))
                if hit.size == 0:
                    continue
                sel = hit if idx is None else idx[hit]
                th, dh = t_in[hit], dl[:, hit]
                tnh = [x[hit] for x in tn]
                a = np.where((tnh[0] >= tnh[1]) & (tnh[0] >= tnh[2]), 0,
                             np.where(tnh[1] >= tnh[2], 1, 2))
                sh, tch, da = _face_coords(a, ol, dh, th, half)
                depth[sel] = th
                tile[sel] = 6 * bi + 2 * a + (da < 0)
                s[sel], tc[sel] = sh, tch
                cos[sel] = np.abs(da) / np.sqrt(dh[0] * dh[0] + dh[1] * dh[1] + dh[2] * dh[2])
                obj[sel] = oid
        return depth, tile, s, tc, cos, obj

    def render(self, t: float, T_world_cam: np.ndarray | None = None) -> RenderedFrame:
        """Render scene time t from T_world_cam (default: the spec's camera pose at t)."""
        if T_world_cam is None:
            T_world_cam = self.spec.camera_poses(t)
        depth, tile, s, tc, cos, obj = self.cast(T_world_cam, t)
        # Footprint of a pixel on the surface: stretched by 1/cos across the slant; the
        # geometric mean of the two directions keeps grazing floors from over-blurring.
        footprint = depth * self.pixel_angle / np.sqrt(np.maximum(cos, 0.05))
        rgb = self.atlas.sample(tile, s, tc, footprint)
        H, W = self.height, self.width
        return RenderedFrame(
            rgb=np.clip(rgb + 0.5, 0, 255).astype(np.uint8).reshape(H, W, 3),
            depth=depth.astype(np.float32).reshape(H, W),
            mask=obj.reshape(H, W))
