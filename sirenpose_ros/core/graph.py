"""Keypoint graph: neighbourhood edges, per-keypoint dynamic probability, per-edge rigidity.

Nodes are the current frame's keypoints; spatial edges join image neighbours (Delaunay), and
temporal edges are the tracks themselves (a node keeps its id, and its state, across frames).

The probability that a keypoint is dynamic comes from a :class:`MotionScorer` (per-node evidence
and per-edge rigidity for one frame). This first scorer is geometric: each track's residual against
the static-world model (reprojection error of its landmark, or its offset from the epipolar line
when it has no landmark yet). A learned motion GNN replaces the scorer behind the same call; the
graph smoothing and the per-track recursive filter stay as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.spatial import Delaunay, QhullError

from sirenpose_ros.core.ids import lookup
from sirenpose_ros.core.params import ParamSpec

PARAMS = [
    ParamSpec("graph_scorer", "gnn", "Per-keypoint dynamic evidence and per-edge rigidity: 'gnn' (the trained motion GNN, models/motion_gnn.safetensors) or 'geometric' (static-model residual through a sigmoid; the static-world ablation also turns off dynamic weighting).", choices=("gnn", "geometric")),
    ParamSpec("graph_max_edge_px", 80.0, "Spatial edges longer than this (working-resolution pixels) are dropped.", 1.0, 10000.0),
    ParamSpec("graph_residual_center_px", 2.5, "Static-model residual (pixels) at which a keypoint is 50% dynamic.", 0.1, 100.0),
    ParamSpec("graph_residual_width_px", 0.6, "Softness of the residual-to-probability sigmoid (pixels).", 0.01, 100.0),
    ParamSpec("graph_rigidity_sigma_px", 2.0, "Residual difference (pixels) at which two neighbours stop moving rigidly together.", 0.01, 100.0),
    ParamSpec("graph_smoothing_steps", 2, "Neighbour-averaging steps over the graph.", 0, 20),
    ParamSpec("graph_smoothing_weight", 0.5, "Weight of the neighbours against a node's own evidence when smoothing.", 0.0, 10.0),
    ParamSpec("graph_rise_rate", 0.7, "Per-frame rate at which a track's probability rises towards new dynamic evidence.", 0.0, 1.0),
    ParamSpec("graph_decay_rate", 0.15, "Per-frame rate at which it falls back (slow: a track that was dynamic stays suspect).", 0.0, 1.0),
    ParamSpec("graph_scorer_max_hz", 30.0, "Run the motion scorer (the GNN) at most this often per second of camera time; on the frames in between each track keeps its filtered probability (new tracks: graph_prior) and the graph keeps the last scored edges among the tracks still there. The GNN's features and the recursive filter's per-frame rates (graph_rise_rate, graph_decay_rate) were trained and tuned at 30 Hz: with a 60 Hz camera, scoring every frame measured worse (scripts/accuracy_60fps.py; 3 s of large_dynamic at 60 fps: ATE 9.0 % of the path and F1 0.57 every frame, 1.8 % and 0.93 at 30; fast: 1.8 % / 0.67 against 0.4 % / 0.75) and costs twice the time. Cameras at 30 Hz or slower are scored on every frame. 0 = every frame whatever the rate. A frame counts as due when at least 0.9/rate seconds passed (camera jitter).", 0.0, 1000.0),
    ParamSpec("graph_prior", 0.1, "Dynamic probability of a keypoint with no evidence yet.", 0.0, 1.0),
    ParamSpec("graph_static_residual_px", 1.0, "A keypoint whose static-model residual (reprojection error of its landmark, or its offset from the epipolar line of the oldest window keyframe that saw it) stayed below this (pixels) for graph_static_residual_frames scored frames in a row fits the static world: the scorer's evidence is capped at 0.5 x residual / this, so that a static region the scorer flags by mistake is cleared (multi_object seed 0: kp F1 0.567 -> 0.642). 0 = off.", 0.0, 100.0),
    ParamSpec("graph_static_residual_frames", 10, "Scored frames in a row a keypoint's residual must stay below graph_static_residual_px before it caps the evidence. A moving point fits the static world only while it moves along its epipolar lines, which seldom lasts: at 1 frame, points of close_object's moving box were cleared and its dense mask IoU fell from 0.65 to 0.55 (10 frames: 0.64).", 1, 1000),
]


@dataclass
class GraphObservation:
    """What a motion scorer sees for one frame."""
    ids: np.ndarray          # (N,) int64 track ids
    px: np.ndarray           # (N, 2) pixels
    residual_px: np.ndarray  # (N, 2) residual vector against the static model, NaN = unknown
    edges: np.ndarray        # (E, 2) int indices into the nodes, i < j
    previous: np.ndarray     # (N,) filtered probability from earlier frames (prior if new)


@dataclass
class GraphResult:
    p_dynamic: np.ndarray    # (N,) float64 in [0, 1], filtered over time
    evidence: np.ndarray     # (N,) this frame's smoothed evidence before the temporal filter
    edges: np.ndarray        # (E, 2) int
    rigidity: np.ndarray     # (E,) in [0, 1]: 1 = endpoints move as one rigid body


class MotionScorer(Protocol):
    """Per-node dynamic evidence (NaN = no evidence) and per-edge rigidity for one frame."""

    def __call__(self, obs: GraphObservation) -> tuple[np.ndarray, np.ndarray]: ...


class GeometricScorer:
    """Evidence from the static-world residual, passed through a sigmoid (robust: saturates)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, obs: GraphObservation) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        r = np.linalg.norm(obs.residual_px, axis=1)          # NaN stays NaN
        with np.errstate(over="ignore", invalid="ignore"):
            p = 1.0 / (1.0 + np.exp(-(r - c.graph_residual_center_px) / c.graph_residual_width_px))
        # Rigidity: two neighbours that deviate from the static model in the same way move together
        # (both static: both ~0; both on one moving object: similar offsets).
        if obs.edges.size:
            d = obs.residual_px[obs.edges[:, 0]] - obs.residual_px[obs.edges[:, 1]]
            rig = np.exp(-0.5 * np.sum(d * d, axis=1) / c.graph_rigidity_sigma_px ** 2)
            rig = np.where(np.isfinite(rig), rig, 0.5)
        else:
            rig = np.zeros(0)
        return p, rig


def delaunay_edges(px: np.ndarray, max_len: float) -> np.ndarray:
    """Unique undirected edges (E, 2), i < j, of the Delaunay triangulation of ``px``."""
    n = px.shape[0]
    if n < 3:
        return np.array([[0, 1]], np.int64) if n == 2 else np.zeros((0, 2), np.int64)
    try:
        tri = Delaunay(np.asarray(px, np.float64)).simplices
    except (QhullError, ValueError):          # all points collinear or coincident
        return np.zeros((0, 2), np.int64)
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [0, 2]]]).astype(np.int64)
    e.sort(axis=1)
    key = np.unique(e[:, 0] * n + e[:, 1])       # 1-D unique: much faster than unique(axis=0)
    e = np.stack([key // n, key % n], axis=1)
    keep = np.linalg.norm(px[e[:, 0]] - px[e[:, 1]], axis=1) <= max_len
    return e[keep].astype(np.int64)


def make_scorer(cfg) -> MotionScorer:
    """The motion scorer chosen by ``graph_scorer``."""
    if cfg.graph_scorer == "gnn":
        from sirenpose_ros.core.motion_gnn import GNNScorer   # torch + weights: only if used
        return GNNScorer(cfg)
    return GeometricScorer(cfg)


class KeypointGraph:
    """``deferred``: a scorer that works in another process (``core/graph_worker.py``):
    ``submit(ids, px, residual_px, previous)`` starts scoring a frame (Delaunay edges included)
    and returns at once, ``result() -> (edges, evidence, rigidity)`` waits for it. A frame's
    :meth:`dynamic_probability` then returns the beliefs as they were (like a frame between
    scored ones) and its scores enter the beliefs at the next :meth:`prior`: the next frame's
    pose sees them, the frame's own outputs and keyframe decision do not. The pose stage then
    never waits for the motion GNN (9-16 ms per scored frame on the H100 host's CPU)."""

    def __init__(self, cfg, scorer: MotionScorer | None = None, deferred=None):
        self.cfg = cfg
        self.deferred = deferred
        self.scorer = scorer if scorer is not None or deferred is not None else make_scorer(cfg)
        self._pending = None
        self.reset()

    def reset(self) -> None:
        if self.deferred is not None:
            if self._pending is not None:
                self._pending = None
                try:
                    self.deferred.result()             # its answer belongs to the old stream
                except Exception:                      # noqa: BLE001 - a dead child restarts
                    pass
            if self.deferred.alive:
                self.deferred.reset()
        if hasattr(self.scorer, "reset"):          # learned scorers keep per-track history
            self.scorer.reset()
        # Filtered probability per live track, kept sorted by id for vectorised lookup.
        self._ids = np.zeros(0, np.int64)
        self._p = np.zeros(0)
        self._fit_frames = np.zeros(0, np.int64)   # consecutive scored frames fitting the static world
        # The last scored frame: its stamp, and its edges (as track-id pairs) with rigidity.
        self._scored_ns = None
        self._edge_ids = np.zeros((0, 2), np.int64)
        self._edge_rig = np.zeros(0)

    def prior(self, ids: np.ndarray, wait: bool = True) -> np.ndarray:
        """Filtered probability of each id from earlier frames (graph_prior for new ids),
        including a frame whose scoring was deferred: ``wait`` for it, or (False) only if it is
        done already (the pose stage does not wait for the child; it then uses the beliefs from
        before that frame, and the scores enter at the next call)."""
        if self._pending is not None and (wait or self.deferred.ready()):
            (p_ids, previous, p_res, stamp_ns), self._pending = self._pending, None
            edges, evidence, rigidity = self.deferred.result()
            self._fuse(p_ids, previous, p_res, edges, evidence, rigidity, stamp_ns)
        return self._belief(ids)

    def _by_id(self, values: np.ndarray, ids: np.ndarray, default) -> np.ndarray:
        """``values`` (one per track in ``self._ids``) looked up for ``ids``; ``default`` for
        ids without one."""
        out = np.full(ids.shape[0], default, values.dtype)
        k, hit = lookup(self._ids, ids)
        out[hit] = values[k[hit]]
        return out

    def _belief(self, ids: np.ndarray) -> np.ndarray:
        return self._by_id(self._p, ids, float(self.cfg.graph_prior))

    def dynamic_probability(self, ids: np.ndarray, px: np.ndarray, residual_px: np.ndarray,
                            stamp_ns: int | None = None) -> GraphResult:
        """Update and return each keypoint's dynamic probability for this frame.

        ``residual_px`` (N, 2): residual vector of each keypoint against the static-world model at
        the current pose estimate (pixels), NaN rows where there is no evidence. ``stamp_ns``:
        the frame's stamp, for ``graph_scorer_max_hz`` (None: score this frame).
        """
        if self._between_scored_frames(stamp_ns):
            return self._carried(ids)
        previous = self.prior(ids)
        if self.deferred is not None:
            self.deferred.submit(ids, px, residual_px, previous)
            self._pending = (ids, previous, residual_px, stamp_ns)
            self._scored_ns = stamp_ns
            return self._carried(ids)
        edges = delaunay_edges(px, self.cfg.graph_max_edge_px)
        evidence, rigidity = self.scorer(GraphObservation(ids, px, residual_px, edges, previous))
        return self._fuse(ids, previous, residual_px, edges, evidence, rigidity, stamp_ns)

    def _fuse(self, ids, previous, residual_px, edges, evidence, rigidity, stamp_ns) -> GraphResult:
        """This frame's evidence, smoothed over the graph and filtered per track, becomes the
        beliefs."""
        c = self.cfg
        n = ids.shape[0]
        # The pose-based residual against the window's keyframes is the sharpest static test
        # there is; the learned scorer weighs it with pose-free cues and its track memory, and
        # kept flagging static tracks at 0.2-0.6 px (a flag holds itself: flagged tracks are
        # down-weighted in its own motion fits). A track that keeps fitting is static.
        r = np.linalg.norm(np.asarray(residual_px, np.float64).reshape(-1, 2), axis=1)
        fits = r < c.graph_static_residual_px            # NaN: False
        fit_frames = np.where(fits, self._by_id(self._fit_frames, ids, 0) + 1, 0)
        cap = fits & (fit_frames >= int(c.graph_static_residual_frames))
        evidence = np.where(cap, np.minimum(evidence, 0.5 * r / max(c.graph_static_residual_px, 1e-12)), evidence)
        known = np.isfinite(evidence)
        # A node without new evidence keeps its own belief as (weaker) evidence: it still
        # spreads within its rigid group, but static neighbours alone cannot clear a track that
        # was found moving and is now unobservable (e.g. moving along its epipolar line).
        conf = np.where(known, 1.0, 0.5)
        evidence_or_prev = np.where(known, evidence, previous)
        p = evidence_or_prev
        if edges.shape[0] and c.graph_smoothing_steps > 0 and c.graph_smoothing_weight > 0:
            # Rigidity-weighted averaging: evidence spreads within a rigid group, not across a
            # motion boundary, and fills in keypoints that have no evidence of their own.
            # Per directed edge (both directions): sums over a node's neighbours are bincounts
            # (a few microseconds; building a scipy sparse matrix per frame cost ~0.3 ms).
            w = np.concatenate([rigidity, rigidity])
            src = np.concatenate([edges[:, 1], edges[:, 0]])
            dst = np.concatenate([edges[:, 0], edges[:, 1]])
            deg = np.bincount(dst, weights=w, minlength=n) * c.graph_smoothing_weight
            base = conf * evidence_or_prev
            has_info = (conf + deg) > 1e-9
            for _ in range(int(c.graph_smoothing_steps)):
                num = base + c.graph_smoothing_weight * np.bincount(dst, weights=w * p[src], minlength=n)
                p = np.where(has_info, num / np.maximum(conf + deg, 1e-9), p)
        # Per-track recursive filter: quick to suspect, slow to forgive.
        rate = np.where(p > previous, c.graph_rise_rate, c.graph_decay_rate)
        filtered = np.clip(previous + rate * (p - previous), 0.0, 1.0)
        order = np.argsort(ids)
        self._ids, self._p, self._fit_frames = ids[order], filtered[order], fit_frames[order]
        self._scored_ns = stamp_ns
        self._edge_ids, self._edge_rig = ids[edges], rigidity
        return GraphResult(filtered, p, edges, rigidity)

    def _between_scored_frames(self, stamp_ns: int | None) -> bool:
        hz = float(self.cfg.graph_scorer_max_hz)
        last = self._scored_ns
        return (hz > 0 and stamp_ns is not None and last is not None and stamp_ns >= last
                and (stamp_ns - last) * 1e-9 < 0.9 / hz)

    def _carried(self, ids: np.ndarray) -> GraphResult:
        """A frame between scored ones: the filtered probabilities as they are, and the last
        scored edges whose two tracks are both still here."""
        p = self._belief(ids)
        order = np.argsort(ids)
        sid = ids[order]
        if sid.size and self._edge_ids.size:
            pos, present = lookup(sid, self._edge_ids)
            hit = np.all(present, axis=1)
            edges = np.sort(order[pos[hit]], axis=1).astype(np.int64)
            rig = self._edge_rig[hit]
        else:
            edges, rig = np.zeros((0, 2), np.int64), np.zeros(0)
        return GraphResult(p, p.copy(), edges, rig)
