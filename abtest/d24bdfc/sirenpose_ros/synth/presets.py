"""Named scene presets: the room, furniture, moving objects and camera trajectory per scenario.

All presets share one room (12 m long along +x, 10 m wide, 3 m high, world z up) whose far
end holds the moving objects; the camera moves in the near half (x in ~[1.8, 6.2], |y| < 1.5)
looking along +x, so the objects stay in front of it. The seed varies furniture placement,
trajectory phases, amplitudes and periods (by +-15 %) and all textures.

Presets (the numbers are what the tests and the benchmark check):
- easy: slow forward + lateral motion, gentle rotation, one small object (< 10 % moving pixels).
- fast: ~2-3 m/s and ~1 rad/s camera motion (large inter-frame displacement).
- still: camera jitters by millimetres; objects move.
- large_dynamic: big objects close to a slow camera (>= 30 % moving pixels on average).
- close_object: a person-sized box walks across ~1.1-1.7 m in front of the camera (t ~ 1 s).
- multi_object: four objects with different motions (slide, spin, shuttle, tumble).
- low_texture: the easy motion with mostly flat surfaces and sparse features.
"""
from __future__ import annotations

import zlib

import numpy as np

from .scene import Box, Motion, SceneSpec, SineSum

PRESETS = ("easy", "fast", "still", "large_dynamic", "close_object", "multi_object", "low_texture")

ROOM_LO = np.array([0.0, -5.0, 0.0])
ROOM_HI = np.array([12.0, 5.0, 3.0])
WALL_COLORS = ((0.78, 0.74, 0.68),   # x- (behind the camera)
               (0.70, 0.76, 0.82),   # x+ far wall, bluish
               (0.82, 0.76, 0.62),   # y- right wall
               (0.74, 0.80, 0.70),   # y+ left wall
               (0.58, 0.47, 0.36),   # floor, wood-like
               (0.88, 0.88, 0.86))   # ceiling
OBJECT_COLORS = ((0.90, 0.20, 0.15), (0.15, 0.35, 0.90), (0.20, 0.80, 0.30),
                 (0.95, 0.70, 0.10), (0.85, 0.25, 0.80))


class _Rand:
    """Seeded helpers: every preset parameter is varied a little by the seed."""

    def __init__(self, name: str, seed: int):
        self.rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])

    def scale(self, x, spread=0.15):
        return np.asarray(x, float) * self.rng.uniform(1 - spread, 1 + spread, np.shape(x))

    def phase(self, shape=()):
        return self.rng.uniform(0, 2 * np.pi, shape)

    def uniform(self, lo, hi):
        return float(self.rng.uniform(lo, hi))


def _furniture(r: _Rand) -> list[Box]:
    """Static boxes against the walls and in the far corners, clear of camera and object lanes
    (|y| > 3.2 or x > 11.4)."""
    wood, grey = (0.55, 0.40, 0.28), (0.55, 0.57, 0.60)
    return [
        Box("cabinet", np.array([0.6, 0.3, 0.9]),
            Motion.static([r.uniform(2.5, 4.5), 4.65, 0.9]), wood),
        Box("table", np.array([0.5, 0.8, 0.4]),
            Motion.static([r.uniform(9.0, 10.0), -4.0, 0.4], [r.uniform(-0.1, 0.1), 0, 0]), grey),
        Box("shelf", np.array([0.25, 1.0, 1.1]),
            Motion.static([11.7, r.uniform(2.6, 3.4), 1.1]), (0.45, 0.50, 0.42)),
        Box("crate", np.array([0.4, 0.4, 0.4]),
            Motion.static([r.uniform(5.0, 7.0), -4.4, 0.4], [r.uniform(-0.3, 0.3), 0, 0]),
            (0.62, 0.52, 0.30)),
    ]


def _camera(r: _Rand, center, pos_terms, ang_terms) -> Motion:
    """Camera body motion. pos_terms/ang_terms: lists of (amp (3,), period (3,)); the first
    x term's phase is kept near 0 so the camera starts by moving forward (parallax for a
    monocular initialisation within the first frames); other phases are random."""
    terms = []
    for i, (amp, period) in enumerate(pos_terms):
        ph = r.phase(3)
        if i == 0:
            ph[0] = r.uniform(-0.5, 0.5)
        terms.append((r.scale(amp), r.scale(period), ph))
    aterms = [(r.scale(amp), r.scale(period), r.phase(3)) for amp, period in ang_terms]
    return Motion(SineSum.make(center, terms=terms), SineSum.make([0, 0, 0], terms=aterms))


def _object(r: _Rand, name, half, color, center, pos_terms=(), yaw_rate=0.0, ang_terms=(),
            ang_rates=None) -> Box:
    """Moving box; pos_terms: (amp (3,), period (3,)[, phase (3,)]) with random phase default."""
    terms = [(r.scale(t[0]), r.scale(t[1]), t[2] if len(t) > 2 else r.phase(3))
             for t in pos_terms]
    rates = np.array([yaw_rate, 0.0, 0.0]) if ang_rates is None else np.asarray(ang_rates, float)
    aterms = [(r.scale(a), r.scale(p), r.phase(3)) for a, p in ang_terms]
    motion = Motion(SineSum.make(center, terms=terms),
                    SineSum.make(r.phase(3) * [1, 0, 0], rate=r.scale(rates), terms=aterms))
    return Box(name, np.asarray(half, float), motion, color, kind="object")


GENTLE_CAMERA = dict(
    pos_terms=[([1.0, 0.5, 0.08], [14.0, 9.0, 6.3]), ([0.0, 0.08, 0.03], [1.0, 3.1, 2.3])],
    ang_terms=[([0.12, 0.04, 0.02], [11.0, 7.0, 5.0])])


def preset(name: str, seed: int = 0) -> SceneSpec:
    """Scene of the named preset (see PRESETS) for a seed; deterministic."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    r = _Rand(name, seed)
    furniture = _furniture(r)
    C = OBJECT_COLORS
    texture = "rich"
    if name in ("easy", "low_texture"):
        camera = _camera(r, [3.2, 0.0, 1.5], **GENTLE_CAMERA)
        objects = [_object(r, "cube", [0.3, 0.3, 0.3], C[0], [8.0, 0.0, 0.3],
                           [([0.0, 1.6, 0.0], [1.0, 6.0, 1.0])], yaw_rate=0.5)]
        texture = "low" if name == "low_texture" else "rich"
    elif name == "fast":
        camera = _camera(r, [4.0, 0.0, 1.5],
                         pos_terms=[([2.0, 1.0, 0.2], [4.5, 3.3, 2.7]),
                                    ([0.0, 0.15, 0.05], [1.0, 1.3, 0.9])],
                         ang_terms=[([0.35, 0.10, 0.06], [2.6, 2.1, 1.7]),
                                    ([0.10, 0.03, 0.0], [1.1, 0.8, 1.0])])
        objects = [_object(r, "cube", [0.35, 0.35, 0.35], C[0], [8.5, 0.0, 0.7],
                           [([0.0, 1.5, 0.25], [1.0, 4.0, 3.0])], yaw_rate=0.8),
                   _object(r, "block", [0.3, 0.5, 0.6], C[1], [10.6, -1.0, 0.6],
                           [([0.4, 0.8, 0.0], [5.0, 6.0, 1.0])], yaw_rate=-0.4)]
    elif name == "still":
        jitter = [([0.004, 0.004, 0.004], [0.9, 1.1, 0.8]), ([0.002, 0.002, 0.002], [0.37, 0.43, 0.31])]
        camera = _camera(r, [3.0, 0.0, 1.5], pos_terms=jitter,
                         ang_terms=[([0.003, 0.003, 0.002], [1.1, 1.3, 0.9]),
                                    ([0.0015, 0.0015, 0.001], [0.41, 0.47, 0.35])])
        objects = [_object(r, "cube", [0.35, 0.35, 0.35], C[0], [7.0, 0.0, 0.35],
                           [([0.0, 1.8, 0.0], [1.0, 5.0, 1.0])], yaw_rate=0.6),
                   _object(r, "walker", [0.25, 0.25, 0.8], C[1], [9.5, 0.0, 0.8],
                           [([0.0, 2.0, 0.0], [1.0, 7.0, 1.0])],
                           ang_terms=[([0.5, 0.0, 0.0], [4.0, 1.0, 1.0])])]
    elif name == "large_dynamic":
        camera = _camera(r, [2.6, 0.0, 1.5],
                         pos_terms=[([0.5, 0.3, 0.05], [12.0, 9.0, 6.0])],
                         ang_terms=[([0.08, 0.03, 0.015], [10.0, 7.0, 5.0])])
        objects = [_object(r, "panel", [0.4, 1.1, 1.0], C[1], [5.4, 0.0, 1.0],
                           [([0.0, 0.8, 0.0], [1.0, 7.0, 1.0])],
                           ang_terms=[([0.25, 0.0, 0.0], [5.0, 1.0, 1.0])]),
                   _object(r, "crate", [0.6, 0.6, 0.6], C[3], [8.2, 0.0, 1.0],
                           [([0.0, 1.6, 0.3], [1.0, 6.0, 4.0])], yaw_rate=0.7)]
    elif name == "close_object":
        camera = _camera(r, [2.2, 0.0, 1.5],
                         pos_terms=[([0.4, 0.25, 0.05], [12.0, 9.0, 6.0])],
                         ang_terms=[([0.08, 0.03, 0.015], [10.0, 7.0, 5.0])])
        t_cross, period = r.uniform(0.8, 1.2), 10.0
        # y = 2.6 sin(2 pi (t - t_cross) / period): crosses the optical axis at t_cross.
        walk = ([0.0, 2.6, 0.0], [1.0, period, 1.0], [0.0, -2 * np.pi * t_cross / period, 0.0])
        person = Box("person", np.array([0.25, 0.3, 0.85]),
                     Motion(SineSum.make([3.9, 0.0, 0.85], terms=[walk]),
                            SineSum.make([0.0, 0.0, 0.0], terms=[([0.2, 0, 0], [3.0, 1, 1], r.phase(3))])),
                     C[0], kind="object")
        objects = [person,
                   _object(r, "cube", [0.35, 0.35, 0.35], C[2], [9.0, 0.0, 0.35],
                           [([0.0, 1.5, 0.0], [1.0, 8.0, 1.0])], yaw_rate=0.4)]
    else:  # multi_object
        camera = _camera(r, [3.2, 0.0, 1.5], **GENTLE_CAMERA)
        objects = [
            _object(r, "slider", [0.3, 0.3, 0.3], C[0], [6.8, -0.5, 0.3],
                    [([0.0, 1.3, 0.0], [1.0, 5.0, 1.0])], yaw_rate=0.8),
            _object(r, "spinner", [0.5, 0.2, 0.35], C[1], [9.5, -1.2, 1.3],
                    [([0.0, 0.0, 0.3], [1.0, 1.0, 3.0])], yaw_rate=1.5,
                    ang_terms=[([0.0, 0.3, 0.0], [1.0, 2.5, 1.0])]),
            _object(r, "shuttle", [0.35, 0.35, 0.35], C[2], [9.0, 1.7, 0.35],
                    [([1.0, 0.0, 0.0], [6.0, 1.0, 1.0])]),
            _object(r, "tumbler", [0.25, 0.25, 0.25], C[3], [8.0, 0.2, 2.0],
                    [([0.3, 0.5, 0.4], [3.5, 4.5, 4.0])], ang_rates=[0.3, 0.9, 1.2]),
        ]
    return SceneSpec(name=name, seed=int(seed), room_lo=ROOM_LO.copy(), room_hi=ROOM_HI.copy(),
                     static_boxes=furniture, objects=objects, camera=camera, texture=texture,
                     wall_colors=WALL_COLORS)
