"""Scene description for the synthetic renderer: a box-shaped room, static boxes (furniture) and
moving rigid boxes, each with a smooth 6-DoF trajectory, plus the camera trajectory.

World frame: x along the room (the camera looks roughly along +x), y to the left, z up; the
floor is z = room.lo[2]. All lengths in metres, times in seconds.

Trajectories are a constant plus a linear term plus a sum of sines per coordinate, so they are
C-infinity (in particular C2: velocity and acceleration are continuous, as the pipeline's
temporal constraints assume). Positions use no linear term in the presets, so poses stay
bounded for any sequence length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Camera optical frame (x right, y down, z forward) expressed in the camera body frame
# (x forward, y left, z up): columns are the optical axes.
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class SineSum:
    """f(t) = const + rate * t + sum_k amp[k] * sin(2 pi freq[k] t + phase[k]), per component."""
    const: np.ndarray                       # (D,)
    rate: np.ndarray                        # (D,)
    amp: np.ndarray                         # (K, D)
    freq: np.ndarray                        # (K, D) in Hz
    phase: np.ndarray                       # (K, D) in rad

    @staticmethod
    def constant(value) -> "SineSum":
        v = np.asarray(value, dtype=np.float64)
        z = np.zeros((0, v.shape[0]))
        return SineSum(v, np.zeros_like(v), z, z, z)

    @staticmethod
    def make(const, rate=None, terms=()) -> "SineSum":
        """terms: iterable of (amp (D,), period_s (D,), phase (D,)); period <= 0 disables."""
        c = np.asarray(const, dtype=np.float64)
        d = c.shape[0]
        r = np.zeros(d) if rate is None else np.asarray(rate, dtype=np.float64)
        amp, freq, phase = [], [], []
        for a, period, ph in terms:
            a = np.broadcast_to(np.asarray(a, dtype=np.float64), (d,))
            period = np.broadcast_to(np.asarray(period, dtype=np.float64), (d,))
            amp.append(a)
            freq.append(np.where(period > 0, 1.0 / np.where(period > 0, period, 1.0), 0.0))
            phase.append(np.broadcast_to(np.asarray(ph, dtype=np.float64), (d,)))
        shape = (len(amp), d)
        return SineSum(c, r, np.array(amp).reshape(shape), np.array(freq).reshape(shape),
                       np.array(phase).reshape(shape))

    def __call__(self, t) -> np.ndarray:
        """t scalar or (N,) -> (D,) or (N, D)."""
        t = np.asarray(t, dtype=np.float64)
        tt = t[..., None, None]                                         # (..., 1, 1)
        waves = self.amp * np.sin(2.0 * np.pi * self.freq * tt + self.phase)  # (..., K, D)
        return self.const + self.rate * t[..., None] + waves.sum(axis=-2)


def euler_zyx(angles: np.ndarray) -> np.ndarray:
    """(..., 3) yaw (about z), pitch (about y), roll (about x) -> R = Rz(yaw) Ry(pitch) Rx(roll)."""
    a = np.asarray(angles, dtype=np.float64)
    cy, sy = np.cos(a[..., 0]), np.sin(a[..., 0])
    cp, sp = np.cos(a[..., 1]), np.sin(a[..., 1])
    cr, sr = np.cos(a[..., 2]), np.sin(a[..., 2])
    R = np.stack([
        cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr,
        sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr,
        -sp, cp * sr, cp * cr,
    ], axis=-1)
    return R.reshape(a.shape[:-1] + (3, 3))


@dataclass(frozen=True)
class Motion:
    """Rigid motion: position (3) and body Euler angles yaw/pitch/roll (3), both SineSums."""
    position: SineSum
    angles: SineSum

    @staticmethod
    def static(position, angles=(0.0, 0.0, 0.0)) -> "Motion":
        return Motion(SineSum.constant(position), SineSum.constant(angles))

    def pose(self, t) -> np.ndarray:
        """t scalar or (N,) -> T_world_body (4, 4) or (N, 4, 4)."""
        p = self.position(t)
        R = euler_zyx(self.angles(t))
        T = np.zeros(p.shape[:-1] + (4, 4))
        T[..., :3, :3] = R
        T[..., :3, 3] = p
        T[..., 3, 3] = 1.0
        return T


@dataclass(frozen=True)
class Box:
    """A rigid box: half extents in its own frame, a motion (T_world_box), a texture look."""
    name: str
    half: np.ndarray                        # (3,) half extents along the box's x, y, z
    motion: Motion
    color: tuple[float, float, float]       # base albedo, RGB in [0, 1]
    kind: str = "furniture"                 # texture family: "furniture" or "object"


@dataclass(frozen=True)
class SceneSpec:
    name: str
    seed: int
    room_lo: np.ndarray                     # (3,) room min corner (world)
    room_hi: np.ndarray                     # (3,) room max corner
    static_boxes: list[Box]
    objects: list[Box]                      # moving boxes; object k (1-based) = objects[k-1]
    camera: Motion                          # T_world_body of the camera body (x forward, z up)
    texture: str = "rich"                   # "rich" or "low"
    wall_colors: tuple = field(default_factory=lambda: ((0.80, 0.74, 0.64),) * 6)

    def camera_poses(self, t) -> np.ndarray:
        """T_world_cam of the optical frame at time(s) t: (4, 4) or (N, 4, 4)."""
        T = self.camera.pose(t)
        T[..., :3, :3] = T[..., :3, :3] @ R_BODY_OPTICAL
        return T

    def object_poses(self, t) -> list[np.ndarray]:
        return [o.motion.pose(t) for o in self.objects]


def point_box_distance(points: np.ndarray, T_world_box: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Euclidean distance from points (N, 3) to a box surface (negative inside), vectorised over
    N poses when T_world_box is (N, 4, 4)."""
    R, c = T_world_box[..., :3, :3], T_world_box[..., :3, 3]
    local = np.einsum("...ji,...j->...i", R, points - c)              # R^T (p - c)
    q = np.abs(local) - half
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    return outside + np.minimum(q.max(axis=-1), 0.0)


def box_corners(T_world_box: np.ndarray, half: np.ndarray) -> np.ndarray:
    """(..., 4, 4) pose -> (..., 8, 3) world corners."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    local = signs * half                                               # (8, 3)
    R, c = T_world_box[..., :3, :3], T_world_box[..., :3, 3]
    return np.einsum("...ij,kj->...ki", R, local) + c[..., None, :]


def check_scene(spec: SceneSpec, times: np.ndarray, camera_clearance: float = 0.3) -> list[str]:
    """Physical sanity over the given times; returns a list of problems (empty = fine).

    Checks that the camera stays inside the room and away from every box, that moving objects
    stay inside the room, and that they do not overlap static boxes or each other (bounding
    spheres against boxes: conservative).
    """
    problems = []
    cam = spec.camera_poses(times)[:, :3, 3]
    if np.any(cam < spec.room_lo + camera_clearance) or np.any(cam > spec.room_hi - camera_clearance):
        problems.append("camera leaves the room")
    statics = [(b.name, b.motion.pose(times), b.half) for b in spec.static_boxes]
    movers = [(o.name, o.motion.pose(times), o.half) for o in spec.objects]
    for name, T, half in statics + movers:
        d = point_box_distance(cam, T, half).min()
        if d < camera_clearance:
            problems.append(f"camera within {d:.2f} m of {name}")
    for i, (name, T, half) in enumerate(movers):
        corners = box_corners(T, half)
        if np.any(corners < spec.room_lo - 1e-9) or np.any(corners > spec.room_hi + 1e-9):
            problems.append(f"{name} leaves the room")
        radius = float(np.linalg.norm(half))
        for sname, Ts, shalf in statics:
            if point_box_distance(T[:, :3, 3], Ts, shalf).min() < radius:
                problems.append(f"{name} may touch {sname}")
        for oname, To, ohalf in movers[i + 1:]:
            gap = np.linalg.norm(T[:, :3, 3] - To[:, :3, 3], axis=1) - radius - np.linalg.norm(ohalf)
            if gap.min() < 0:
                problems.append(f"{name} may touch {oname}")
    return problems
