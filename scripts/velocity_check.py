#!/usr/bin/env python3
"""How right are the velocities the clouds' dynamic points carry? Per-keypoint world velocities
as the dense stage publishes them (``FrameResult.keypoint_velocity``: the values it spreads over
the cloud; NaN = unknown) against the renderer's ground truth, on synthetic presets, with the
pipeline's defaults (field on the CPU).

Ground truth of a track on a moving object between frames t and t+1: both pixels back-projected
with the rendered depth and the true poses, difference / dt (a keypoint that stays on its
surface point, as a KLT track on a rigid object does). The estimate lives in the pipeline's own
world frame and scale: it is mapped with the Sim(3) alignment of the trajectory (s, R). Reported
per preset: the keypoints flagged dynamic (above cloud_dynamic_threshold) on a truly moving
surface, the share of them with a known (finite) velocity, and over the known ones the median
speed of the truth and of the estimate, the median relative error |v_est - v_gt| / |v_gt| and
the median angle between them; last, the share of the clouds' dynamic points (all frames) whose
velocity is known.

    PYTHONPATH=$PWD python scripts/velocity_check.py --presets large_dynamic,close_object,multi_object
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.core.types import Frame, TrackingState
from sirenpose_ros.eval.metrics import fit_alignment
from sirenpose_ros.tools.accuracy import cpu_devices, load_sequence_cached


def gt_points(seq, t: int, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) of pixels ``px`` of frame t with the rendered depth, and whether each
    lies on a moving object (rendered motion mask)."""
    h, w = seq.depth.shape[1:]
    ij = np.clip(np.round(px).astype(int), 0, [w - 1, h - 1])
    # Depth interpolated bilinearly (rounding to the nearest pixel moves a floor point by
    # centimetres); where the four neighbours lie on different surfaces, the nearest pixel's.
    d = seq.depth[t].astype(np.float64)
    x0 = np.clip(np.floor(px[:, 0]).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(px[:, 1]).astype(int), 0, h - 2)
    fx, fy = np.clip(px[:, 0] - x0, 0, 1), np.clip(px[:, 1] - y0, 0, 1)
    q = np.stack([d[y0, x0], d[y0, x0 + 1], d[y0 + 1, x0], d[y0 + 1, x0 + 1]], 1)
    z = ((1 - fy) * ((1 - fx) * q[:, 0] + fx * q[:, 1]) + fy * ((1 - fx) * q[:, 2] + fx * q[:, 3]))
    split = q.max(1) > 1.02 * q.min(1)
    z[split] = d[ij[split, 1], ij[split, 0]]
    xc = (np.linalg.inv(seq.K) @ np.c_[px, np.ones(len(px))].T).T * z[:, None]
    T = seq.T_world_cam[t]
    return xc @ T[:3, :3].T + T[:3, 3], seq.mask[t][ij[:, 1], ij[:, 0]] > 0


def check(preset: str, seed: int, frames: int, size: tuple[int, int], cache: Path | None) -> dict:
    seq, _ = load_sequence_cached(preset, seed, frames, *size, cache)
    K = seq.K
    cam = CameraModel.pinhole(seq.width, seq.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    cfg = make_config(cpu_devices({}))
    pipe = Pipeline(cfg)
    T_est = np.full((len(seq), 4, 4), np.nan)
    rows = []       # (t, id, v_est (3,), NaN = unknown)
    tracks = []     # per frame: dict id -> px
    cloud_dyn = cloud_known = 0
    for t in range(len(seq)):
        r = pipe.process(Frame(int(seq.stamps_ns[t]), cv2.cvtColor(seq.rgb[t], cv2.COLOR_RGB2GRAY),
                               seq.rgb[t], cam))
        tracks.append(dict(zip(r.keypoint_ids.tolist(), np.asarray(r.keypoints, np.float64))))
        if r.state is TrackingState.TRACKING and r.T_world_cam is not None:
            T_est[t] = r.T_world_cam
        if r.keypoint_velocity is not None:     # what the dense stage spreads over the cloud
            dyn = r.dynamic_prob > cfg.cloud_dynamic_threshold
            rows += [(t, i, np.asarray(v, np.float64))
                     for i, v in zip(r.keypoint_ids[dyn].tolist(), r.keypoint_velocity[dyn])]
            cd = r.cloud.dynamic > cfg.cloud_dynamic_threshold
            cloud_dyn += int(cd.sum())
            cloud_known += int(np.isfinite(r.cloud.velocity[cd]).all(1).sum())
    ok = np.isfinite(T_est).all(axis=(1, 2))
    s, R, _ = fit_alignment(T_est[ok], seq.T_world_cam[ok], "sim3")
    dt = np.diff(seq.stamps_ns.astype(np.float64)) * 1e-9
    v_gt, v_est = [], []
    for t, i, v in rows:
        if t + 1 >= len(seq) or i not in tracks[t] or i not in tracks[t + 1]:
            continue
        (X0,), (m0,) = gt_points(seq, t, tracks[t][i][None])
        (X1,), (m1,) = gt_points(seq, t + 1, tracks[t + 1][i][None])
        if not (m0 and m1):
            continue                   # the truth is only defined on a moving surface here
        v_gt.append((X1 - X0) / dt[t])
        v_est.append(s * (R @ v))
    out = {"preset": preset, "n": len(v_gt), "known": 0.0,
           "cloud_known": cloud_known / cloud_dyn if cloud_dyn else float("nan")}
    known = np.isfinite(np.array(v_est).reshape(-1, 3)).all(1)
    if not known.any():
        return out
    g, e = np.array(v_gt)[known], np.array(v_est)[known]
    ng, ne = np.linalg.norm(g, axis=1), np.linalg.norm(e, axis=1)
    cos = np.sum(g * e, axis=1) / np.maximum(ng * ne, 1e-12)
    return {**out, "known": float(known.mean()), "gt_speed": float(np.median(ng)),
            "est_speed": float(np.median(ne)),
            "rel_err": float(np.median(np.linalg.norm(e - g, axis=1) / np.maximum(ng, 1e-9))),
            "angle_deg": float(np.median(np.degrees(np.arccos(np.clip(cos, -1, 1)))))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="large_dynamic,close_object,multi_object")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    print("| preset | dynamic keypoints on moving surfaces | with known velocity | true speed (median, m/s) "
          "| estimated speed | relative error (median) | angle (median, deg) | cloud's dynamic points with known velocity |")
    print("|---|---|---|---|---|---|---|---|")
    for p in args.presets.split(","):
        r = check(p, args.seed, args.frames, size, args.cache_dir)
        head = f"| {p} | {r['n']} | {100 * r['known']:.0f} % |"
        tail = f" {100 * r['cloud_known']:.0f} % |"
        if "gt_speed" not in r:
            print(head + " - | - | - | - |" + tail, flush=True)
            continue
        print(head + f" {r['gt_speed']:.3f} | {r['est_speed']:.3f} | {r['rel_err']:.2f} | {r['angle_deg']:.0f} |"
              + tail, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
