"""Keypoint frontend: detect corners where tracks are missing and follow them with pyramidal KLT.

The classical CPU frontend of the pipeline. A learned frontend (XFeat + LighterGlue) implements
the same :class:`Frontend` interface: ``reset()`` and ``track(gray) -> Tracks`` with ids that stay
stable while a keypoint is followed, so everything downstream (graph, window) is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from sirenpose_ros.core.params import ParamSpec

PARAMS = [
    ParamSpec("frontend_max_keypoints", 350, "Number of keypoints the frontend keeps alive per frame.", 20, 5000),
    ParamSpec("frontend_min_distance_px", 10.0, "Minimum distance between keypoints (working-resolution pixels).", 1.0, 200.0),
    ParamSpec("frontend_quality_level", 0.001, "Corner quality threshold relative to the best corner (goodFeaturesToTrack).", 1e-5, 0.5),
    ParamSpec("frontend_min_quality_level", 1e-5, "Adaptive detection: when too few corners pass frontend_quality_level (low texture), the threshold is lowered tenfold at a time down to this. Low enough that the first frame (no live tracks masked, so the strongest corner of the whole image sets the bar) gets as many corners as later ones: it is the initialisation's reference.", 1e-6, 0.5),
    ParamSpec("frontend_subpixel", True, "Refine new corners to sub-pixel accuracy (cornerSubPix) before tracking them.", None, None),
    ParamSpec("frontend_block_size", 5, "Corner detector window (pixels, odd).", 3, 15),
    ParamSpec("frontend_klt_window_px", 21, "KLT window side (pixels, odd).", 5, 61),
    ParamSpec("frontend_klt_levels", 3, "KLT pyramid levels above the base image.", 0, 6),
    ParamSpec("frontend_klt_iterations", 20, "KLT iterations per pyramid level.", 1, 100),
    ParamSpec("frontend_klt_min_eigenvalue", 1e-5, "KLT's texture test (OpenCV minEigThreshold: smallest eigenvalue of the window's gradient matrix per pixel, image in [0, 1]): windows below it are not tracked. OpenCV's default 1e-4 drops the faint but trackable texture of low-texture scenes (plain walls and floors), which the adaptive detection (frontend_min_quality_level) does find.", 1e-7, 1e-2),
    ParamSpec("frontend_fb_threshold_px", 0.5, "Forward-backward consistency threshold (pixels): tracks that do not return are dropped.", 0.01, 10.0),
    ParamSpec("frontend_slip_error_ratio", 3.0, "A track whose KLT photometric error in this frame (mean absolute grey-level difference over the window after alignment) exceeds this many times the median of the frame's tracks (and frontend_slip_min_error) is marked slipped (Tracks.slipped). A window that straddles the edge of a moving object holds two motions: KLT follows a compromise and the track is dragged along with the object while its centre stays on the background; the forward-backward check passes (both passes follow the object), the photometric error does not (large_dynamic seed 2: 14 % of the landmark observations were > 2 px off the ground truth, nearly all within a KLT half-window of a moving object, 6 % of them flagged by the motion graph; frame steps that slid > 0.5 px had a median error of 6.3 grey levels, the others 1.1). The track keeps its id (the motion graph needs the tracks of rotating or approaching objects, whose appearance changes too: dropping them lost low_texture's small cube entirely); once a map exists, the pipeline hands it to the estimator as a new track from then on (large_dynamic seeds 0-7: mean ATE 1.67 -> 1.41 % of the path). Relative to the frame's median, so that contrast and the warp common to all tracks do not matter. 0 = off.", 0.0, 100.0),
    ParamSpec("frontend_slip_min_error", 2.0, "Photometric error (grey levels, 0-255) below which a track is never marked slipped (frontend_slip_error_ratio): differences of a few grey levels are image noise and quantisation, and on faint texture the frame's median is a fraction of a grey level (low_texture: 0.09), where a ratio alone marked 14 % of the tracks in every frame.", 0.0, 255.0),
    ParamSpec("frontend_grid_cols", 8, "Columns of the re-detection grid (keeps keypoints spread).", 1, 64),
    ParamSpec("frontend_grid_rows", 6, "Rows of the re-detection grid.", 1, 64),
    ParamSpec("frontend_redetect_ratio", 0.9, "Detect new corners when fewer than this share of max_keypoints survive.", 0.0, 1.0),
    ParamSpec("frontend_min_isotropy", 0.1, "Low texture: when the detector had to lower its threshold below frontend_quality_level, new corners need a KLT window whose gradient matrix has smallest / largest eigenvalue >= this (textured in both directions). Faint edge-like corners slide along their edge: on low_texture (seeds 1, 2) 23 % and 11 % of the 10-frame tracks were > 2 px off the ground truth, 6 % and 4 % with this at 0.1. Images with enough strong corners are unaffected. 0 = off.", 0.0, 1.0),
    ParamSpec("frontend_center_window_px", 9, "Centre check: after each KLT step the keypoint is re-tracked at full resolution with a window of this side (pixels, odd), starting from the KLT result. A frontend_klt_window_px window that straddles a moving object's edge follows whichever side dominates it while the keypoint's own pixel lies on the other side: such a track measures neither surface (most of the dynamic false positives on fast, multi_object and low_texture were these). The small window then pulls away from the large one's answer. Steps whose small window fails frontend_klt_min_eigenvalue are not checked (too little texture to tell). 0 = off.", 0, 31),
    ParamSpec("frontend_center_max_px", 0.75, "Centre check: a track is dropped when the small window moves its keypoint by more than this (pixels) from the large window's answer. Measured with a 9 px window on fast and multi_object (seed 0): tracks that stay on their surface median 0.05-0.07 px, 99th percentile 0.56-0.58 px; tracks > 2 px off the ground truth median 0.27-0.37 px, 75th percentile 0.56-0.68 px per step. 1.0 measured worse (ATE on large_dynamic, tracked share on low_texture, seeds 0-3).", 0.05, 20.0),
    ParamSpec("frontend_border_px", 4, "Keypoints closer than this to the image border are dropped.", 0, 64),
]


@dataclass
class Tracks:
    """Keypoints of one frame. Row i of every array describes the same keypoint."""
    ids: np.ndarray     # (N,) int64, stable while the keypoint is tracked, never reused
    px: np.ndarray      # (N, 2) float32 pixel coordinates (u, v) in the frontend's image
    age: np.ndarray     # (N,) int32, frames this keypoint has been tracked (0 = detected now)
    # (N,) bool: the track's step into this frame is a photometric outlier (see
    # frontend_slip_error_ratio); None where the frontend does not tell (no track is).
    slipped: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @staticmethod
    def empty() -> "Tracks":
        return Tracks(np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.int32),
                      np.zeros(0, bool))


class Frontend(Protocol):
    """What the pipeline needs from any frontend (classical KLT or learned)."""

    def reset(self) -> None: ...

    def track(self, gray: np.ndarray) -> Tracks: ...


def structure_tensor_at(gray: np.ndarray, px: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """(N, 3) image structure tensor [Sxx, Sxy, Syy] (Sobel gradients summed over a box
    ``window`` (width, height)) of ``gray`` at the pixel positions ``px`` (N, 2), nearest pixel.
    Computed over the whole image in OpenCV, which releases the GIL (callers run it beside the
    pose stage), then sampled."""
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    S = cv2.boxFilter(cv2.merge([cv2.multiply(gx, gx), cv2.multiply(gx, gy), cv2.multiply(gy, gy)]),
                      -1, tuple(window))
    h, w = gray.shape
    c = np.clip(np.rint(px[:, 0]).astype(np.int64), 0, w - 1)
    r = np.clip(np.rint(px[:, 1]).astype(np.int64), 0, h - 1)
    return S[r, c].astype(np.float64)


class KLTFrontend:
    """Shi-Tomasi corners tracked by pyramidal Lucas-Kanade with a forward-backward check."""

    def __init__(self, cfg):
        self.cfg = cfg
        w = int(cfg.frontend_klt_window_px) | 1
        self._win = (w, w)
        self._levels = int(cfg.frontend_klt_levels)
        self._criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
                          int(cfg.frontend_klt_iterations), 0.01)
        self._min_eig = float(cfg.frontend_klt_min_eigenvalue)
        c = int(cfg.frontend_center_window_px)
        self._center_win = (c | 1, c | 1) if c > 0 else None
        self.reset()

    def reset(self) -> None:
        self._prev_pyr = None
        self._prev_shape = None
        self._tracks = Tracks.empty()
        self._next_id = 0

    def track(self, gray: np.ndarray) -> Tracks:
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError("KLTFrontend.track expects an HxW uint8 image")
        if self._prev_shape is not None and gray.shape != self._prev_shape:
            self.reset()
        # OpenCV's Python binding cannot take a prebuilt pyramid (InputArray only), so the previous
        # image is kept instead; rebuilding its pyramid costs ~0.4 ms at 640x480.
        pyr = gray
        tracks = self._follow(pyr, gray.shape) if self._prev_pyr is not None else Tracks.empty()
        if len(tracks) < self.cfg.frontend_redetect_ratio * self.cfg.frontend_max_keypoints:
            tracks = self._detect(gray, tracks)
        self._prev_pyr, self._prev_shape, self._tracks = pyr, gray.shape, tracks
        return tracks

    def _follow(self, pyr, shape) -> Tracks:
        prev = self._tracks
        if len(prev) == 0:
            return prev
        p0 = prev.px.reshape(-1, 1, 2)
        p1, st1, err = cv2.calcOpticalFlowPyrLK(self._prev_pyr, pyr, p0, None, winSize=self._win,
                                              maxLevel=self._levels, criteria=self._criteria,
                                              minEigThreshold=self._min_eig)
        # Backward pass starts at the original positions: a consistent track comes straight back.
        p0b, st2, _ = cv2.calcOpticalFlowPyrLK(pyr, self._prev_pyr, p1, p0.copy(), winSize=self._win,
                                               maxLevel=self._levels, criteria=self._criteria,
                                               flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                               minEigThreshold=self._min_eig)
        p1 = p1.reshape(-1, 2)
        fb = np.linalg.norm(p0b.reshape(-1, 2) - prev.px, axis=1)
        b = self.cfg.frontend_border_px
        h, w = shape
        keep = ((st1.ravel() == 1) & (st2.ravel() == 1) & (fb < self.cfg.frontend_fb_threshold_px)
                & (p1[:, 0] >= b) & (p1[:, 1] >= b) & (p1[:, 0] <= w - 1 - b) & (p1[:, 1] <= h - 1 - b))
        if self._center_win is not None and keep.any():
            keep[keep] = self._center_agrees(pyr, p0[keep], p1[keep])
        slipped = self._slipped(err.ravel(), keep)
        return Tracks(prev.ids[keep], p1[keep].astype(np.float32), prev.age[keep] + 1, slipped[keep])

    def _slipped(self, err: np.ndarray, tracked: np.ndarray) -> np.ndarray:
        """(N,) bool: KLT photometric error ``err`` above ``frontend_slip_error_ratio`` times its
        median over the ``tracked`` points and above ``frontend_slip_min_error`` (none when off,
        or with too few tracks for a median to mean anything)."""
        ratio = float(self.cfg.frontend_slip_error_ratio)
        if ratio <= 0 or tracked.sum() < 10:
            return np.zeros(err.shape[0], bool)
        limit = max(ratio * float(np.median(err[tracked])), float(self.cfg.frontend_slip_min_error))
        return err > limit

    def _center_agrees(self, img, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
        """(N,) bool: re-tracking the keypoints ``p0`` (N, 1, 2) of the previous image with the
        small centre window, from the large window's answer ``p1`` (N, 2), stays within
        ``frontend_center_max_px`` of it. On one surface both windows measure the same motion;
        when the large window straddles two motions the small one follows the keypoint's own
        side. Level 0 only: the large window already brought the answer within a pixel or two.
        Keypoints whose small window is too faint to track (status 0) are kept: no evidence."""
        q, st, _ = cv2.calcOpticalFlowPyrLK(self._prev_pyr, img, p0, p1.reshape(-1, 1, 2).copy(),
                                            winSize=self._center_win, maxLevel=0,
                                            criteria=self._criteria,
                                            flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                            minEigThreshold=self._min_eig)
        moved = np.linalg.norm(q.reshape(-1, 2) - p1, axis=1)
        return (st.ravel() == 0) | (moved <= self.cfg.frontend_center_max_px)

    def _isotropic(self, gray: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """(N,) bool: the KLT window at each point ``pts`` (N, 2) has a gradient matrix with
        smallest / largest eigenvalue >= ``frontend_min_isotropy`` (a ratio: the image's scale
        does not matter). It runs only on low-texture frames (see _detect)."""
        s = structure_tensor_at(gray, pts, self._win)
        half = 0.5 * (s[:, 0] + s[:, 2])
        d = np.sqrt(np.maximum(half * half - (s[:, 0] * s[:, 2] - s[:, 1] ** 2), 0.0))
        return (half - d) >= self.cfg.frontend_min_isotropy * np.maximum(half + d, 1e-30)

    def _detect(self, gray: np.ndarray, tracks: Tracks) -> Tracks:
        cfg = self.cfg
        h, w = gray.shape
        n_max = int(cfg.frontend_max_keypoints)
        need = n_max - len(tracks)
        if need <= 0:
            return tracks
        # Mask: image minus the border minus a disc of min_distance around every live track
        # (drawn by dilating single pixels, so no per-point drawing loop).
        occupied = np.zeros((h, w), np.uint8)
        if len(tracks):
            ij = np.round(tracks.px).astype(np.int32)
            occupied[np.clip(ij[:, 1], 0, h - 1), np.clip(ij[:, 0], 0, w - 1)] = 255
            r = max(1, int(round(cfg.frontend_min_distance_px)))
            disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            occupied = cv2.dilate(occupied, disc)
        mask = np.where(occupied > 0, 0, 255).astype(np.uint8)
        b = max(int(cfg.frontend_border_px), 1)
        mask[:b] = 0
        mask[-b:] = 0
        mask[:, :b] = 0
        mask[:, -b:] = 0
        # Quality is relative to the strongest corner outside the mask: in a low-texture image a
        # few strong edges set a bar the rest cannot reach, so lower it while too few corners
        # pass. Corners too faint for KLT (frontend_klt_min_eigenvalue) drop out at the next
        # frame; filtering them here instead measured worse (their slots went to more faint,
        # long-lived and less precise tracks).
        quality = float(cfg.frontend_quality_level)
        while True:
            corners = cv2.goodFeaturesToTrack(gray, maxCorners=4 * need, qualityLevel=quality,
                                              minDistance=cfg.frontend_min_distance_px, mask=mask,
                                              blockSize=int(cfg.frontend_block_size))
            n_found = 0 if corners is None else len(corners)
            if n_found >= need or quality <= cfg.frontend_min_quality_level:
                break
            quality = max(quality * 0.1, float(cfg.frontend_min_quality_level))
        if corners is None:
            return tracks
        if cfg.frontend_min_isotropy > 0 and quality < cfg.frontend_quality_level:
            # The bar had to be lowered (low texture): what passes now is mostly faint edges,
            # where KLT slides along the edge (aperture problem) by pixels over a few frames and
            # biases the two-view geometry. Keep the corners textured in both directions.
            corners = corners[self._isotropic(gray, corners.reshape(-1, 2))]
            if len(corners) == 0:
                return tracks
        if cfg.frontend_subpixel:
            # Corner positions to a fraction of a pixel: less noise in the first (and every later)
            # position of the track, which matters most when tracks are few.
            # A refinement that moves by more than a pixel slid along an edge: keep the original.
            c0 = corners.astype(np.float32)
            c1 = cv2.cornerSubPix(gray, c0.copy(), (3, 3), (-1, -1),
                                  (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03))
            moved = np.linalg.norm((c1 - c0).reshape(-1, 2), axis=1) > 1.0
            corners = np.where(moved[:, None, None], c0, c1)
        corners = corners.reshape(-1, 2).astype(np.float32)   # sorted by corner strength
        # Spread the budget over a grid: each cell may hold about n_max / cells keypoints; new
        # corners go to cells in strength order until their cell is full.
        gc, gr = int(cfg.frontend_grid_cols), int(cfg.frontend_grid_rows)
        cap = int(np.ceil(n_max / (gc * gr)))
        def cell_of(p):
            cx = np.clip((p[:, 0] * gc / w).astype(np.int64), 0, gc - 1)
            cy = np.clip((p[:, 1] * gr / h).astype(np.int64), 0, gr - 1)
            return cy * gc + cx
        used = np.bincount(cell_of(tracks.px), minlength=gc * gr) if len(tracks) else np.zeros(gc * gr, np.int64)
        cells = cell_of(corners)
        # Rank of each corner within its cell (corners are already in strength order).
        order = np.argsort(cells, kind="stable")
        sorted_cells = cells[order]
        first = np.searchsorted(sorted_cells, sorted_cells, side="left")
        rank = np.empty_like(cells)
        rank[order] = np.arange(cells.size) - first
        ok = rank < (cap - used[cells])
        # Cells without texture leave budget unused: give it to the strongest remaining corners.
        extra = need - int(ok.sum())
        if extra > 0:
            ok[np.flatnonzero(~ok)[:extra]] = True
        new = corners[ok][:need]
        ids = np.arange(self._next_id, self._next_id + len(new), dtype=np.int64)
        self._next_id += len(new)
        slipped = tracks.slipped if tracks.slipped is not None else np.zeros(len(tracks), bool)
        return Tracks(np.concatenate([tracks.ids, ids]),
                      np.concatenate([tracks.px, new]).astype(np.float32),
                      np.concatenate([tracks.age, np.zeros(len(new), np.int32)]),
                      np.concatenate([slipped, np.zeros(len(new), bool)]))
