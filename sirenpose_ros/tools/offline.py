"""Run the pipeline straight from a rosbag2 (MCAP or sqlite3), without DDS: the deterministic
reference of what the live node computes.

    sirenpose_offline BAG --out DIR [--image-topic /camera/image_raw]
        [--info-topic /camera/camera_info] [--param NAME:=VALUE ...] [--params-file live.yaml]
        [--gt groundtruth.tum] [--gt-npz gt.npz] [--max-frames N]

Every image of the bag is processed in order (nothing is dropped, unlike the live node, which
keeps only the newest frame when it falls behind), with the same input policy as the node: frames
before the first CameraInfo are skipped, a duplicate stamp is skipped, a stamp going backwards
(bag loop) resets the pipeline, an image whose size disagrees with its CameraInfo is skipped.
Pipeline exceptions propagate: a reference run must fail loudly, not reset and carry on.

Outputs in DIR (the same kind as sirenpose_demo's, so the two can be compared):
  trajectory.tum   T_world_cam of every tracked frame (world = the pipeline's world frame)
  map.ply          the last fused static map the pipeline returned
  cloud.ply        the last dense cloud
  metrics.json     tracking / accuracy / timing metrics (see run_offline)
  summary.png      trajectory (Sim(3)-aligned to GT when given) and depth or cloud
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sirenpose_ros.core.params import parse_assignments

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
# The live node's name (sirenpose_ros/ros/node.py); not imported, because that module needs rclpy.
NODE_NAME = "sirenpose"
# Parameters every rclpy node has; a params file written for the live node may set them.
ROS_BUILTIN_PARAMS = ("use_sim_time", "start_type_description_service")
DYNAMIC_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """ROS params files may nest parameters: {a: {b: 1}} is the parameter 'a.b'."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def read_params_file(path: str | Path) -> dict[str, Any]:
    """All parameters a ROS 2 params YAML gives the live node (not yet filtered).

    Sections are ``<node>: {ros__parameters: {...}}``. With one section it is taken whatever its
    node name; with several, those that apply to the node ('/**', '*', or a name whose last
    component is the node's, e.g. '/robot1/sirenpose') are merged in file order, as ROS does.
    """
    import yaml
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a ROS 2 params file (expected '<node>: ros__parameters:')")
    sections = [(str(k), v["ros__parameters"]) for k, v in data.items()
                if isinstance(v, dict) and "ros__parameters" in v]
    if not sections:
        raise ValueError(f"{path}: no '<node>: ros__parameters:' section")
    if len(sections) > 1:
        sections = [(k, v) for k, v in sections
                    if k in ("/**", "*") or k.rstrip("/").split("/")[-1] in (NODE_NAME, "*")]
        if not sections:
            raise ValueError(f"{path}: several sections, none for node '{NODE_NAME}' or '/**'")
    values: dict[str, Any] = {}
    for key, params in sections:
        if params is None:
            continue
        if not isinstance(params, dict):
            raise ValueError(f"{path}: '{key}: ros__parameters' is not a mapping")
        values.update(_flatten(params))
    return values


def core_values(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split parameter values into (the core pipeline's, ignored node-level names).

    Node-level names (NODE_PARAMS, ROS built-ins, qos_overrides.*) are ignored: they configure
    the ROS adapter, which the offline run does not have. Anything else unknown is an error.
    """
    from sirenpose_ros.core.config import pipeline_params
    from sirenpose_ros.core.params import ParamError
    from sirenpose_ros.ros.node_params import NODE_PARAMS
    core = {s.name for s in pipeline_params()}
    node = {s.name for s in NODE_PARAMS} | set(ROS_BUILTIN_PARAMS)
    kept, ignored, unknown = {}, [], []
    for name, value in values.items():
        if name in core:
            kept[name] = value
        elif name in node or name.startswith("qos_overrides."):
            ignored.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise ParamError(f"unknown parameter(s) {', '.join(sorted(unknown))}; the pipeline's are: "
                         f"{', '.join(sorted(core))}")
    return kept, ignored


# ---------------------------------------------------------------------------------------------
# Ground truth at the pipeline's resolution
# ---------------------------------------------------------------------------------------------

def working_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """(W, H) of the image the pipeline works on: the input downscaled to ``max_width``
    (``pipeline_max_image_width``) the way ``Pipeline`` does it (``CameraModel.scaled``)."""
    s = min(1.0, max_width / width)
    if s >= 1.0:
        return width, height
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def grid_centres(full: int, small: int, work: int | None = None) -> np.ndarray:
    """Input-image coordinates of the pixel centres of a ``small``-pixel reduced axis.

    The pipeline's reduced grids are corner-aligned over its working image
    (sirenpose_ros/core/field.py, cloud.py): small pixel j sits at working coordinate
    j (work - 1) / (small - 1); the working image is the input resized (cv2 convention),
    so working x is input (x + 0.5) full / work - 0.5. ``work`` defaults to ``full``.
    """
    work = full if work is None else work
    if small == 1:
        x = np.array([(work - 1) / 2.0])
    else:
        x = np.arange(small) * ((work - 1) / (small - 1))
    return (x + 0.5) * (full / work) - 0.5


def grid_indices(full: int, small: int, work: int | None = None) -> np.ndarray:
    """Input-image index nearest to each reduced pixel centre (see :func:`grid_centres`)."""
    return np.clip(np.rint(grid_centres(full, small, work)), 0, full - 1).astype(np.int64)


def resize_nearest(img: np.ndarray, h: int, w: int,
                   work_hw: tuple[int, int] | None = None) -> np.ndarray:
    """``img`` (H, W) sampled (nearest pixel) at the centres of the pipeline's (h, w) grid."""
    H, W = img.shape[:2]
    wh, ww = work_hw if work_hw is not None else (H, W)
    return img[np.ix_(grid_indices(H, h, wh), grid_indices(W, w, ww))]


class DenseGroundTruth:
    """Per-frame GT depth and motion mask (a sequence's gt.npz), looked up by image stamp."""

    def __init__(self, path: str | Path, max_dt_ns: int):
        with np.load(path) as z:
            self.depth, self.mask = z["depth"], z["mask"]
            self.stamps = np.asarray(z["stamps_ns"], np.int64)
        if self.depth.shape != self.mask.shape or self.depth.shape[0] != self.stamps.shape[0]:
            raise ValueError(f"{path}: depth {self.depth.shape}, mask {self.mask.shape} and "
                             f"stamps {self.stamps.shape} do not agree")
        self._order = np.argsort(self.stamps, kind="stable")
        self._sorted = self.stamps[self._order]
        self.max_dt_ns = int(max_dt_ns)

    def index(self, stamp_ns: int) -> int | None:
        """Index of the GT frame nearest to ``stamp_ns``, None when none is within max_dt."""
        if self._sorted.size == 0:
            return None
        j = int(np.searchsorted(self._sorted, stamp_ns))
        best = min((k for k in (j - 1, j) if 0 <= k < self._sorted.size),
                   key=lambda k: abs(int(self._sorted[k]) - stamp_ns))
        if abs(int(self._sorted[best]) - stamp_ns) > self.max_dt_ns:
            return None
        return int(self._order[best])


def depth_split(pred: np.ndarray, gt: np.ndarray, scale: float, moving: np.ndarray) -> dict:
    """Where one frame's depth error is: Abs Rel summed over its moving pixels (``moving``, the
    rendered motion mask) and over its static ones at the frame's median scale ``scale`` (the
    scored one), pixel counts, and the median ratio pred / gt of the moving pixels at the static
    pixels' own median scale (how far off the moving objects are, independent of the scale
    they pull)."""
    ok = np.isfinite(pred) & (pred > 0) & np.isfinite(gt) & (gt > 0)
    mv, st = ok & moving, ok & ~moving
    rel = np.abs(pred * scale - gt) / np.where(ok, gt, 1.0)
    ratio = float("nan")
    if mv.any() and st.any():
        s_static = np.median(gt[st]) / np.median(pred[st])
        ratio = float(np.median(pred[mv] * s_static / gt[mv]))
    return {"sum_moving": float(rel[mv].sum()), "sum_static": float(rel[st].sum()),
            "n_moving": int(mv.sum()), "n_static": int(st.sum()), "moving_ratio": ratio}


def depth_split_summary(rows: list[dict]) -> dict:
    """Over frames: the share of the Abs Rel error mass on moving pixels, the mean Abs Rel of
    moving and of static pixels, and the geometric mean of the moving pixels' depth ratio."""
    nan = float("nan")
    sm = sum(r["sum_moving"] for r in rows)
    ss = sum(r["sum_static"] for r in rows)
    nm = sum(r["n_moving"] for r in rows)
    ns = sum(r["n_static"] for r in rows)
    ratios = np.array([r["moving_ratio"] for r in rows], np.float64)
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    return {"depth_error_share_moving": sm / (sm + ss) if sm + ss > 0 else nan,
            "depth_abs_rel_moving": sm / nm if nm else nan,
            "depth_abs_rel_static": ss / ns if ns else nan,
            "depth_moving_ratio": float(np.exp(np.mean(np.log(ratios)))) if ratios.size else nan}


class DenseScores:
    """Accumulates depth, dynamic-mask and dynamic-keypoint scores frame by frame."""

    def __init__(self, gt: DenseGroundTruth, cfg):
        self.gt = gt
        self.cfg = cfg
        self.depth_rows: list[dict] = []         # depth_metrics per frame with depth
        self.depth_split: list[dict] = []        # depth_split per frame with depth
        self.mask_iou: list[float] = []          # per frame with dynamic probabilities
        self.mask_inter = 0                      # pooled over frames
        self.mask_union = 0
        self.kp_pred: list[np.ndarray] = []
        self.kp_true: list[np.ndarray] = []
        self.frames_without_gt = 0
        self.last_depth: tuple[np.ndarray, np.ndarray] | None = None   # (pred, gt) for the plot

    def add(self, result) -> None:
        from sirenpose_ros.eval.metrics import depth_metrics, mask_iou
        i = self.gt.index(result.stamp_ns)
        if i is None:
            self.frames_without_gt += 1
            return
        gt_depth, gt_mask = self.gt.depth[i], self.gt.mask[i]
        H, W = gt_depth.shape
        work = working_size(W, H, self.cfg.pipeline_max_image_width)[::-1]    # (Hw, Ww)
        kp = np.asarray(result.keypoints, np.float64).reshape(-1, 2)
        prob = np.asarray(result.dynamic_prob, np.float64).reshape(-1)
        if result.depth is not None:
            h, w = result.depth.shape
            g = resize_nearest(gt_depth, h, w, work)
            m = depth_metrics(result.depth, g, median_scale=True)
            if m["n"] > 0:
                self.depth_rows.append(m)
                self.last_depth = (result.depth, g)
                self.depth_split.append(depth_split(result.depth, g, m["scale"],
                                                    resize_nearest(gt_mask, h, w, work) > 0))
        if kp.shape[0] and prob.shape[0] == kp.shape[0]:
            # Keypoint labels: GT mask at the keypoint's (observed) pixel.
            col = np.clip(np.rint(kp[:, 0]), 0, W - 1).astype(np.int64)
            row = np.clip(np.rint(kp[:, 1]), 0, H - 1).astype(np.int64)
            self.kp_true.append(gt_mask[row, col] > 0)
            self.kp_pred.append(prob > DYNAMIC_THRESHOLD)
            if result.dynamic_map is not None:       # the dense grid the cloud was built on
                h, w = result.dynamic_map.shape
                pred = result.dynamic_map > DYNAMIC_THRESHOLD
                true = resize_nearest(gt_mask, h, w, work) > 0
                self.mask_iou.append(mask_iou(pred, true))
                self.mask_inter += int(np.count_nonzero(pred & true))
                self.mask_union += int(np.count_nonzero(pred | true))

    def summary(self) -> dict:
        from sirenpose_ros.eval.metrics import binary_f1
        nan = float("nan")
        out: dict[str, Any] = {"depth_frames": len(self.depth_rows)}
        if self.depth_rows:
            out["depth_abs_rel"] = float(np.mean([r["abs_rel"] for r in self.depth_rows]))
            out["depth_delta1"] = float(np.mean([r["delta1"] for r in self.depth_rows]))
            out["depth_coverage"] = float(np.mean([r["coverage"] for r in self.depth_rows]))
            out.update(depth_split_summary(self.depth_split))
        else:
            out.update(depth_abs_rel=nan, depth_delta1=nan, depth_coverage=0.0)
        out["dyn_mask_frames"] = len(self.mask_iou)
        out["dyn_mask_iou"] = float(np.mean(self.mask_iou)) if self.mask_iou else nan
        out["dyn_mask_iou_pooled"] = (self.mask_inter / self.mask_union if self.mask_union
                                      else (1.0 if self.mask_iou else nan))
        if self.kp_pred:
            f1 = binary_f1(np.concatenate(self.kp_pred), np.concatenate(self.kp_true))
            out.update(dyn_kp_precision=f1["precision"], dyn_kp_recall=f1["recall"],
                       dyn_kp_f1=f1["f1"], dyn_kp_n=int(sum(p.size for p in self.kp_pred)),
                       dyn_kp_gt_share=float(np.mean(np.concatenate(self.kp_true))))
        else:
            out.update(dyn_kp_precision=nan, dyn_kp_recall=nan, dyn_kp_f1=nan, dyn_kp_n=0)
        out["frames_without_gt_depth"] = self.frames_without_gt
        return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def timing_stats(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage: mean / p50 / p99 ms and the number of frames that ran it."""
    stages: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            stages.setdefault(k, []).append(float(v))
    out = {}
    for k, vals in stages.items():
        a = np.asarray(vals)
        out[k] = {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
                  "p99": float(np.percentile(a, 99)), "n": int(a.size)}
    return out


def _trajectory_metrics(stamps: np.ndarray, T: np.ndarray, gt_path: Path, max_dt_ns: int
                        ) -> tuple[dict, tuple | None, tuple | None]:
    """ATE/RPE of the estimate vs a TUM ground truth -> (metrics, the Sim(3) (s, R, t) mapping
    the estimate onto the ground truth, (matched estimate indices, matched GT poses)); the last
    two are None when fewer than 3 poses match or the alignment is degenerate."""
    from sirenpose_ros.eval import metrics as E
    from sirenpose_ros.io.tum import read_tum
    gt_stamps, gt_T = read_tum(gt_path)
    ia, ib = E.associate(stamps, gt_stamps, max_dt_ns)
    out: dict[str, Any] = {"gt_frames": int(len(gt_stamps)), "n_matched": int(len(ia)),
                           "trajectory_length": E.trajectory_length(gt_T)}
    if len(ia) < 3:
        out["trajectory_error"] = f"only {len(ia)} poses match ground truth; ATE needs 3"
        return out, None, None
    try:
        a = E.ate(T[ia], gt_T[ib], align="sim3")
        sim3 = E.fit_alignment(T[ia], gt_T[ib], "sim3")
    except ValueError as exc:     # e.g. all matched positions collinear
        out["trajectory_error"] = str(exc)
        return out, None, None
    r = E.rpe(T[ia], gt_T[ib], delta=1)
    length = out["trajectory_length"]
    out.update(ate_rmse=a["rmse"], ate_mean=a["mean"], ate_max=a["max"],
               ate_percent_of_length=100.0 * a["rmse"] / max(length, 1e-9),
               sim3_scale=a["scale"], rpe_trans_rmse=r["trans_rmse"],
               rpe_rot_rmse_deg=r["rot_rmse_deg"], matched_length=E.trajectory_length(gt_T[ib]))
    return out, sim3, (ia, gt_T[ib])


def run_offline(bag: str | Path, out: str | Path, image_topic: str = IMAGE_TOPIC,
                info_topic: str = INFO_TOPIC, cfg_values: dict[str, Any] | None = None,
                gt: str | Path | None = None, gt_npz: str | Path | None = None,
                max_frames: int | None = None, max_dt_ms: float = 20.0, plot: bool = True,
                progress: Callable[[int, Any], None] | None = None) -> dict:
    """Process every frame of ``bag``, write the outputs to ``out``, return the metrics.

    ``cfg_values``: core parameter overrides (``make_config`` validates them). ``gt``: TUM
    ground truth, for ATE (Sim(3) Umeyama; also as % of the ground-truth path length) and RPE
    (1 frame; translation after the Sim(3) scale). ``gt_npz``: per-frame depth/mask ground
    truth, for depth Abs Rel / delta<1.25 (median-scaled per frame, averaged over frames with
    depth), the dynamic-mask IoU (per-frame mean, and pooled over all frames) and the dynamic-keypoint
    precision/recall/F1 (pooled over all keypoints). ``max_dt_ms``: stamp association tolerance.
    ``progress(i, result)`` is called after each frame.

    Always present: frames_processed, frames_with_pose, tracked_share (frames with a pose /
    frames processed), tracked_share_after_init (from the first pose on), longest_lost_run
    (frames without a pose in a row, initialisation included), first_pose_frame, resets
    (pipeline re-initialisations, bag-loop resets included), time_jumps_back, states (frames
    per TrackingState), frames_skipped (duplicate_stamp, size_mismatch), wall_time_s, fps
    (frames / wall time of the whole loop, bag reading and decoding included), timings_ms (per
    stage mean/p50/p99 over the frames that ran it; 'read_decode' is the bag read + image
    decode and 'process' the whole Pipeline.process call), map_points, cloud_points, params.
    """
    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.pipeline import Pipeline
    from sirenpose_ros.core.types import Frame, TrackingState
    from sirenpose_ros.io.bag import read_camera_frames
    from sirenpose_ros.io.ply import write_ply
    from sirenpose_ros.io.tum import write_tum

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_values = dict(cfg_values or {})
    cfg = make_config(cfg_values)
    max_dt_ns = int(round(max_dt_ms * 1e6))
    dense = DenseScores(DenseGroundTruth(gt_npz, max_dt_ns), cfg) if gt_npz is not None else None
    pipeline = Pipeline(cfg)

    stamps: list[int] = []
    poses: list[np.ndarray] = []
    tracked: list[bool] = []
    states: Counter = Counter()
    skipped: Counter = Counter()
    timings: list[dict[str, float]] = []
    resets = time_jumps = 0
    last_stamp = None
    map_cloud = cloud = None

    frames = read_camera_frames(bag, image_topic, info_topic,
                                significant_bits=cfg.image_16bit_significant_bits)
    t_start = time.perf_counter()
    t_read = t_start
    try:
        for bf in frames:
            read_ms = (time.perf_counter() - t_read) * 1e3
            if max_frames is not None and len(tracked) >= max_frames:
                break
            # The live node's input policy, in its order (SirenPoseNode._process).
            if last_stamp is not None and bf.stamp_ns < last_stamp:
                pipeline.reset()            # bag loop
                resets += 1
                time_jumps += 1
            elif last_stamp is not None and bf.stamp_ns == last_stamp:
                skipped["duplicate_stamp"] += 1
                t_read = time.perf_counter()
                continue
            if bf.gray.shape != (bf.camera.height, bf.camera.width):
                skipped["size_mismatch"] += 1
                t_read = time.perf_counter()
                continue
            last_stamp = bf.stamp_ns
            t0 = time.perf_counter()
            res = pipeline.process(Frame(bf.stamp_ns, bf.gray, bf.rgb, bf.camera))
            process_ms = (time.perf_counter() - t0) * 1e3
            timings.append({**res.timings_ms, "read_decode": read_ms, "process": process_ms})
            states[res.state.value] += 1
            resets += int(bool(res.reset))
            ok = res.state is TrackingState.TRACKING and res.T_world_cam is not None
            tracked.append(ok)
            if ok:
                stamps.append(res.stamp_ns)
                poses.append(np.asarray(res.T_world_cam, np.float64))
            if res.map_cloud is not None:
                map_cloud = res.map_cloud
            if res.cloud is not None:
                cloud = res.cloud
            if dense is not None:
                dense.add(res)
            if progress is not None:
                progress(len(tracked) - 1, res)
            t_read = time.perf_counter()
    finally:
        frames.close()                  # closes the bag reader at once, also on errors
    wall = time.perf_counter() - t_start
    n = len(tracked)
    if n == 0:
        raise ValueError(f"{bag}: no frame processed (no image on '{image_topic}' after a "
                         f"CameraInfo on '{info_topic}')")

    from sirenpose_ros.eval.metrics import longest_lost_run
    stamps_a = np.asarray(stamps, np.int64)
    T = np.stack(poses) if poses else np.zeros((0, 4, 4))
    write_tum(out / "trajectory.tum", stamps_a, T)
    for c, name in ((map_cloud, "map.ply"), (cloud, "cloud.ply")):
        if c is not None and len(c):
            write_ply(out / name, c)
        elif (out / name).exists():
            (out / name).unlink()      # never leave a previous run's cloud behind

    tracked_a = np.asarray(tracked, bool)
    metrics: dict[str, Any] = {
        "bag": str(bag), "image_topic": image_topic,
        "frames_processed": n, "frames_with_pose": int(tracked_a.sum()),
        "tracked_share": float(tracked_a.mean()), "longest_lost_run": longest_lost_run(tracked_a),
        "first_pose_frame": int(np.argmax(tracked_a)) if tracked_a.any() else None,
        # Share after initialisation: separates losing track from needing parallax to start.
        "tracked_share_after_init": (float(tracked_a[np.argmax(tracked_a):].mean())
                                     if tracked_a.any() else 0.0),
        "resets": resets, "time_jumps_back": time_jumps, "states": dict(states),
        "frames_skipped": dict(skipped),
        "wall_time_s": wall, "fps": n / wall if wall > 0 else float("nan"),
        "map_points": len(map_cloud) if map_cloud is not None else 0,
        "cloud_points": len(cloud) if cloud is not None else 0,
    }
    sim3 = matched = None
    if gt is not None:
        traj, sim3, matched = _trajectory_metrics(stamps_a, T, Path(gt), max_dt_ns)
        metrics.update(traj)
    if dense is not None:
        metrics.update(dense.summary())
    metrics["timings_ms"] = timing_stats(timings)
    metrics["params"] = cfg_values
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    if plot:
        _plot(out / "summary.png", metrics, T, sim3, matched, dense,
              map_cloud if map_cloud is not None else cloud)
    return metrics


def _json_safe(v: Any) -> Any:
    """NaN/inf -> null (strict JSON), NumPy scalars -> Python numbers."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _bag_label(bag: str) -> str:
    """'seq/bag' rather than just 'bag' (rosbag2 folders are often all called 'bag')."""
    p = Path(bag).resolve()
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _plot(path: Path, metrics: dict, T: np.ndarray, sim3, matched, dense, cloud) -> None:
    """summary.png: trajectory (aligned when GT exists), then the last depth vs GT depth when
    gt.npz was given, else the map (or last cloud) from above."""
    from sirenpose_ros.core.types import Cloud
    from sirenpose_ros.eval.metrics import apply_alignment
    from sirenpose_ros.eval.plot import plot_summary
    shown = {k: metrics[k] for k in (
        "tracked_share", "longest_lost_run", "resets", "ate_rmse", "ate_percent_of_length",
        "rpe_trans_rmse", "rpe_rot_rmse_deg", "depth_abs_rel", "depth_delta1", "dyn_mask_iou",
        "dyn_kp_f1", "fps") if k in metrics}
    est, gt_T = T, None           # no ground truth: the raw estimate, in the pipeline's frame
    if sim3 is not None:
        s, R, t = sim3
        ia, gt_T = matched
        est = apply_alignment(T[ia], s, R, t)
        if cloud is not None:     # the cloud is in the pipeline's world frame, like the poses
            cloud = Cloud((s * cloud.xyz.astype(np.float64) @ R.T + t).astype(np.float32),
                          cloud.rgb, cloud.dynamic, cloud.velocity)
    depth_pred = depth_gt = None
    if dense is not None and dense.last_depth is not None:
        depth_pred, depth_gt = dense.last_depth
    plot_summary(path, est, gt_T, depth_pred=depth_pred, depth_gt=depth_gt,
                 cloud=cloud if depth_pred is None else None,
                 title=f"sirenpose offline: {_bag_label(metrics['bag'])}", metrics=shown,
                 up="+z" if gt_T is not None else "-y")   # GT worlds (synthetic, mocap) are z-up


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def format_table(m: dict) -> str:
    """The metrics as an aligned two-column table, then the per-stage timings."""
    def f(key: str, fmt: str = "{:.4f}", scale: float = 1.0) -> str | None:
        v = m.get(key)
        if v is None:
            return None
        return fmt.format(v * scale) if isinstance(v, float) else str(v)

    rows = [
        ("frames processed", f"{m['frames_processed']} ({m['fps']:.2f} FPS, "
                             f"{m['wall_time_s']:.1f} s)"),
        ("tracked share", f("tracked_share", "{:.1f} %", 100)),
        ("tracked share after init", f("tracked_share_after_init", "{:.1f} %", 100)),
        ("first pose at frame", f("first_pose_frame")),
        ("longest lost run", f("longest_lost_run")),
        ("resets", f("resets")),
        ("ATE rmse (sim3)", f("ate_rmse")),
        ("ATE % of path", f("ate_percent_of_length", "{:.2f} %")),
        ("RPE trans rmse (d=1)", f("rpe_trans_rmse")),
        ("RPE rot rmse (d=1)", f("rpe_rot_rmse_deg", "{:.3f} deg")),
        ("sim3 scale", f("sim3_scale")),
        ("trajectory error", m.get("trajectory_error")),
        ("depth AbsRel", f("depth_abs_rel")),
        ("depth delta<1.25", f("depth_delta1")),
        ("depth coverage", f("depth_coverage", "{:.1f} %", 100)),
        ("dyn mask IoU (mean/pooled)",
         None if "dyn_mask_iou" not in m else
         f"{m['dyn_mask_iou']:.3f} / {m['dyn_mask_iou_pooled']:.3f}"),
        ("dyn keypoint P/R/F1",
         None if "dyn_kp_f1" not in m else
         f"{m['dyn_kp_precision']:.3f} / {m['dyn_kp_recall']:.3f} / {m['dyn_kp_f1']:.3f}"),
        ("map / cloud points", f"{m['map_points']} / {m['cloud_points']}"),
    ]
    rows = [(k, v) for k, v in rows if v is not None]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    t = m.get("timings_ms", {})
    if t:
        sw = max(len(k) for k in t)
        lines += ["", f"{'stage':<{sw}}  {'mean':>8} {'p50':>8} {'p99':>8}  ms  (frames)"]
        lines += [f"{k:<{sw}}  {v['mean']:8.2f} {v['p50']:8.2f} {v['p99']:8.2f}      ({v['n']})"
                  for k, v in t.items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sirenpose_offline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bag", type=Path, help="rosbag2 folder (MCAP or sqlite3)")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--image-topic", default=IMAGE_TOPIC,
                    help=f"sensor_msgs/Image or CompressedImage topic (default {IMAGE_TOPIC})")
    ap.add_argument("--info-topic", default=INFO_TOPIC,
                    help=f"sensor_msgs/CameraInfo topic (default {INFO_TOPIC})")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="pipeline parameter (repeatable; overrides --params-file)")
    ap.add_argument("--params-file", type=Path, default=None,
                    help="ROS 2 params YAML of the live node; its pipeline parameters are used, "
                         "node-level ones ignored")
    ap.add_argument("--gt", type=Path, default=None, help="ground-truth trajectory (TUM)")
    ap.add_argument("--gt-npz", type=Path, default=None,
                    help="per-frame ground truth (gt.npz: depth, mask, stamps_ns)")
    ap.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    ap.add_argument("--max-dt-ms", type=float, default=20.0,
                    help="stamp tolerance when matching ground truth (default 20 ms)")
    ap.add_argument("--no-plot", action="store_true", help="skip summary.png")
    args = ap.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        ap.error("--max-frames must be >= 1")
    bad = [p for p in args.param if ":=" not in p]
    if bad:
        ap.error(f"--param expects NAME:=VALUE, got {bad}")
    return args


def gather_params(params_file: Path | None, params: list[str]) -> tuple[dict, list[str]]:
    """Core values from a params file overlaid with NAME:=VALUE strings -> (values, ignored)."""
    values = read_params_file(params_file) if params_file is not None else {}
    values.update(parse_assignments(params))
    return core_values(values)


def main(argv: list[str] | None = None) -> int:
    """Console script: 0 on success, 1 on a bad bag / parameter / ground truth (message on
    stderr), 2 on bad usage (argparse)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        values, ignored = gather_params(args.params_file, args.param)
        if ignored:
            print(f"[offline] ignoring node-level parameter(s): {', '.join(sorted(ignored))}",
                  file=sys.stderr)
        metrics = run_offline(args.bag, args.out, args.image_topic, args.info_topic, values,
                              gt=args.gt, gt_npz=args.gt_npz, max_frames=args.max_frames,
                              max_dt_ms=args.max_dt_ms, plot=not args.no_plot)
    except (ValueError, KeyError, OSError) as exc:     # ParamError is a ValueError
        # KeyError's str() is its repr; show the message itself.
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {text}", file=sys.stderr)
        return 1
    print(format_table(metrics))
    print(f"[offline] outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
