"""Speed benchmark: per-stage latency, end-to-end FPS, image-to-TF latency and peak memory.

    sirenpose_benchmark --mode pipeline --size 640x480,1280x720 --frames 150 --warmup 20 \\
        --param field_enabled:=false --label klt-sparse --json klt.json --markdown klt.md
    sirenpose_benchmark --mode live --size 640x480 --rate 30 --frames 300 --label klt-live ...
    sirenpose_benchmark --mode report a.json b.json --markdown table.md [--reference LABEL]

Modes:
- ``pipeline`` (no ROS; runs anywhere, the GPU machine included): each frame of a rendered
  synthetic sequence is held as an rgb8 byte buffer (what a ``sensor_msgs/Image`` carries) and
  timed through: image conversion (``decode_image``), ``Pipeline.track`` (pose), the TF/odometry
  payload, ``Pipeline.densify`` (field + cloud) and the PointCloud2 payload (structured array
  packing + ``tobytes``, the copy ``cloud2_msg`` makes). The pose latency of a frame is
  conversion + track + TF payload (the node publishes TF before the dense stages); the cloud
  latency adds densify and the cloud payload. Without ``track``/``densify`` in the pipeline,
  ``process`` is timed and the TF waits for the dense stages. CUDA is synchronised before every
  clock read, so GPU work is charged to the stage that launched it. Warm-up frames are run but
  not counted.
- ``live`` (needs rclpy): starts the node process (DDS confined to this host, private domain),
  publishes frames at a fixed rate with stamp = publish wall time, and records the arrival wall
  time of every odom -> base TF on /tf and of every cloud: latency = arrival - image stamp,
  measured in this process, transport both ways included. Reports input/output rates, frames
  without a TF (dropped or not tracked), the node's counters and its peak RSS.
- ``report``: merges JSON files written by the other modes into one markdown document.

Frames are rendered once and cached (``--cache-dir``); ``--frames`` above ``--render-frames``
replays the rendered frames forward and backward (ping-pong: the motion stays continuous).
Numbers depend on the machine and its load: the JSON records the host, the load average before
and after each run, the command, the commit and the date.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sirenpose_ros.io.pointcloud import cloud_to_array
from sirenpose_ros.io.tum import matrix_to_quat

# Display order and names of the stages; stages the pipeline reports under other names are
# shown too, before the dense ones.
STAGE_ORDER = ("decode", "frontend", "matching", "gnn", "graph", "window", "init", "map", "joint",
               "field", "cloud", "publish_tf", "publish_cloud", "other")
STAGE_NAMES = {
    "decode": "image conversion (rgb8 bytes -> gray + rgb)",
    "frontend": "keypoints (detection/tracking; matching too unless reported apart)",
    "matching": "matching",
    "gnn": "motion GNN",
    "graph": "keypoint graph + dynamic probability (motion GNN when enabled)",
    "window": "window solve (pose, keyframe decision; sequential mode also triangulation + BA)",
    "init": "two-view initialisation before a map exists (staged: in the map worker, "
            "window_async_init)",
    "map": "keyframe insertion (triangulation, bundle adjustment; after the pose is published; "
           "staged: in the map worker)",
    "joint": "SirenPose joint window refinement (keyframes only; after the pose is published)",
    "field": "field fit + dense depth render",
    "cloud": "cloud (back-projection, voxel map)",
    "publish_tf": "TF/odometry payload (pose composition + quaternion)",
    "publish_cloud": "PointCloud2 payload (structured array + tobytes)",
    "other": "not attributed (resize, undistortion, bookkeeping)",
}
DENSE_STAGES = ("field", "cloud", "publish_cloud")
PUBLISHED_REFERENCE = (
    "Published speeds of research systems with dense output, **as published by their authors on "
    "their own hardware (not measured here, not comparable one to one)**: MASt3R-SLAM 15 FPS "
    "(Murai et al., CVPR 2025, single desktop GPU), CUT3R ~17 FPS (Wang et al., CVPR 2025).")

# ============================================================================ input frames

@dataclass
class BenchSequence:
    """Rendered frames as rgb8 message payloads, with the ground truth the benchmark needs."""
    name: str
    width: int
    height: int
    fps: float
    K: np.ndarray              # (3, 3)
    T_world_cam: np.ndarray    # (N, 4, 4) ground truth
    images: list               # N rgb8 buffers (bytes), row step = 3 * width

    def __len__(self) -> int:
        return len(self.images)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 32 or h < 32:
        raise ValueError(f"size {text!r}: width and height must be >= 32")
    return w, h


_RENDERER = None


def _init_renderer(preset: str, seed: int, width: int, height: int) -> None:
    global _RENDERER
    from sirenpose_ros.synth.presets import preset as make_preset
    from sirenpose_ros.synth.render import Renderer, default_intrinsics
    _RENDERER = Renderer(make_preset(preset, seed), width, height, default_intrinsics(width, height))


def _render_one(job: tuple[float, np.ndarray]) -> np.ndarray:
    t, T = job
    return _RENDERER.render(t, T).rgb


def render_frames(preset: str, seed: int, n_frames: int, width: int, height: int,
                  fps: float = 30.0, workers: int = 1) -> BenchSequence:
    """Render RGB frames of a synthetic preset (the same scene, times and poses as
    ``synth.sequence.render_sequence``) in ``workers`` processes; depth and masks are not kept."""
    from sirenpose_ros.synth.presets import preset as make_preset
    from sirenpose_ros.synth.render import default_intrinsics
    from sirenpose_ros.synth.sequence import START_NS, frame_stamps
    spec = make_preset(preset, seed)
    times = (frame_stamps(n_frames, fps) - START_NS) / 1e9
    T = spec.camera_poses(times)
    jobs = [(float(t), T[i]) for i, t in enumerate(times)]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers, _init_renderer, (preset, seed, width, height)) as pool:
            rgb = pool.map(_render_one, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        _init_renderer(preset, seed, width, height)
        rgb = [_render_one(j) for j in jobs]
    return BenchSequence(f"{preset}/seed{seed}", width, height, fps, default_intrinsics(width, height),
                         T, [np.ascontiguousarray(f).tobytes() for f in rgb])


def cached_frames(preset: str, seed: int, n_frames: int, width: int, height: int,
                  cache_dir: Path | None, workers: int = 1, fps: float = 30.0) -> BenchSequence:
    """:func:`render_frames`, stored as an uncompressed .npz under ``cache_dir`` (None: no cache)."""
    path = None
    if cache_dir is not None:
        rate = "" if fps == 30.0 else f"_{fps:g}fps"
        path = Path(cache_dir) / f"{preset}_s{seed}_{width}x{height}_{n_frames}f{rate}.npz"
        if path.is_file():
            with np.load(path) as z:
                rgb = z["rgb"]
                return BenchSequence(f"{preset}/seed{seed}", width, height, float(z["fps"]),
                                     z["K"], z["T"], [f.tobytes() for f in rgb])
    seq = render_frames(preset, seed, n_frames, width, height, fps=fps, workers=workers)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = np.stack([np.frombuffer(b, np.uint8).reshape(height, width, 3) for b in seq.images])
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, rgb=rgb, K=seq.K, T=seq.T_world_cam, fps=seq.fps)
        tmp.replace(path)
    return seq


def sequence_from_dir(path: Path) -> BenchSequence:
    """A directory written by ``synth.sequence.write_sequence`` (bag + ground truth)."""
    from sirenpose_ros.synth.sequence import load_sequence
    seq = load_sequence(path)
    return BenchSequence(str(path), seq.width, seq.height, seq.fps, seq.K, seq.T_world_cam,
                         [np.ascontiguousarray(f).tobytes() for f in seq.rgb])


def pingpong(n_unique: int, n_frames: int) -> np.ndarray:
    """Frame indices 0..n-1, n-2..1, 0.. (length ``n_frames``): a longer replay whose motion
    stays continuous (the camera reverses instead of jumping back to the start)."""
    if n_unique < 1:
        raise ValueError("need at least one frame")
    if n_unique == 1:
        return np.zeros(n_frames, np.int64)
    period = np.concatenate([np.arange(n_unique), np.arange(n_unique - 2, 0, -1)])
    return np.resize(period, n_frames).astype(np.int64)


# ============================================================================ measurement helpers

def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def now_s() -> float:
    """perf_counter after waiting for queued CUDA work (when CUDA is in use), so that GPU time
    is charged to the stage that launched it."""
    if _cuda_in_use():
        sys.modules["torch"].cuda.synchronize()
    return time.perf_counter()


def _proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS / VmHWM of a process in MB (empty dict if unreadable)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0), so the peak that
    is reported belongs to the measured part and not to rendering the frames."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit_id() -> str:
    """Short commit of the source tree, '+dirty' when tracked files differ; 'unknown' w/o git."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def host_info() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "numpy": np.__version__,
            "machine": platform.machine()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        import cv2
        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    return info


def percentiles(values) -> dict:
    """mean / p50 / p99 / max (NaN for no values). numpy's linear percentile: with ~100 samples
    p99 lies between the two largest, so it is close to the max."""
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": int(a.size)}


# ============================================================================ publish payloads

def tf_payload(T_world_cam: np.ndarray, T_base_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the node computes for the odom -> base TF/odometry of a pose: translation, quaternion."""
    T_odom_base = T_base_cam @ T_world_cam @ np.linalg.inv(T_base_cam)
    return T_odom_base[:3, 3].copy(), matrix_to_quat(T_odom_base[:3, :3])


# Optical frame in a camera body frame (x forward, y left, z up), as the node's default extrinsic.
T_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


# ============================================================================ parameters

def parse_param(text: str) -> tuple[str, str]:
    if ":=" not in text:
        raise ValueError(f"--param {text!r}: expected NAME:=VALUE")
    name, value = text.split(":=", 1)
    return name.strip(), value.strip()


def typed_params(pairs: list[tuple[str, str]], specs) -> dict:
    """NAME/text pairs -> values of each spec's type (unknown names raise ValueError)."""
    by_name = {s.name: s for s in specs}
    out = {}
    for name, text in pairs:
        if name not in by_name:
            raise ValueError(f"unknown parameter {name!r}")
        t = by_name[name].type
        if t is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"parameter {name!r}: expected true or false, got {text!r}")
            out[name] = text.lower() in ("true", "1")
        elif t is int:
            out[name] = int(text)
        elif t is float:
            out[name] = float(text)
        else:
            out[name] = text
    return out


# ============================================================================ pipeline mode

def _tracking_summary(stamps: list, poses: list, gt: list, n_frames: int) -> dict:
    from sirenpose_ros.eval.metrics import ate
    out = {"tracked_share": len(poses) / max(n_frames, 1), "n_poses": len(poses)}
    if len(poses) >= 3:
        try:
            a = ate(np.stack(poses), np.stack(gt), align="sim3")
            out.update(ate_rmse=a["rmse"], ate_scale=a["scale"])
        except ValueError:
            pass
    out["poses"] = {"stamps_ns": [int(s) for s in stamps],
                    "T": [np.round(T[:3].reshape(-1), 9).tolist() for T in poses]}
    return out


def _reset_memory_peaks(torch_cuda) -> float:
    """Reset the host (and, given torch with CUDA, GPU) peak-memory counters; -> RSS now (MB)."""
    reset_peak_rss()
    if torch_cuda is not None:
        torch_cuda.cuda.reset_peak_memory_stats()
    return _proc_status().get("VmRSS", float("nan"))


def _memory_summary(seq: BenchSequence, rss_start: float, torch_cuda, gpu_used_peak: float) -> dict:
    mem = {"rss_start_mb": rss_start, "peak_rss_mb": _proc_status().get("VmHWM", float("nan")),
           "input_frames_mb": sum(len(b) for b in seq.images) / 2**20}
    if torch_cuda is not None:
        mem.update(gpu_peak_allocated_mb=torch_cuda.cuda.max_memory_allocated() / 2**20,
                   gpu_peak_reserved_mb=torch_cuda.cuda.max_memory_reserved() / 2**20,
                   gpu_device_used_peak_mb=gpu_used_peak)
    return mem


def _bench_frames(seq: BenchSequence, n_frames: int, warmup: int):
    """(W, H, frame order, stamps, camera) of a timed run over ``seq``."""
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.synth.sequence import frame_stamps
    if n_frames <= warmup:
        raise ValueError(f"--frames ({n_frames}) must exceed --warmup ({warmup})")
    W, H = seq.width, seq.height
    camera = CameraModel.pinhole(W, H, seq.K[0, 0], seq.K[1, 1], seq.K[0, 2], seq.K[1, 2])
    return W, H, pingpong(len(seq), n_frames), frame_stamps(n_frames, seq.fps), camera


def run_pipeline(seq: BenchSequence, params: dict, n_frames: int, warmup: int,
                 label: str = "") -> dict:
    """Time ``n_frames`` frames (``warmup`` of them not counted) through the pipeline."""
    import cv2  # noqa: F401  (imported before the clock starts)
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.image import decode_image
    from sirenpose_ros.core.pipeline import Pipeline
    from sirenpose_ros.core.types import Frame, TrackingState
    from sirenpose_ros.synth.sequence import frame_stamps

    W, H, order, stamps, camera = _bench_frames(seq, n_frames, warmup)
    torch = sys.modules.get("torch")
    gpu = torch is not None and torch.cuda.is_available()
    load_start = load_average()
    rss_start = _reset_memory_peaks(torch if gpu else None)
    pipeline = Pipeline(make_config(params))
    T_odom_world = T_BASE_OPTICAL
    published = {}                  # this frame's TF: payload start and end times

    def on_pose(pose):
        published["start"] = now_s()
        if pose.state == TrackingState.TRACKING and pose.T_world_cam is not None:
            tf_payload(pose.T_world_cam, T_odom_world)
        published["end"] = now_s()

    rows, stage_keys = [], []
    poses, pose_stamps, gt = [], [], []
    gpu_used_peak = 0.0
    n_clouds = 0
    t_loop = None
    for i in range(n_frames):
        if i == warmup:
            t_loop = now_s()
        buf = seq.images[order[i]]
        t0 = now_s()
        gray, rgb = decode_image("rgb8", W, H, 3 * W, buf)
        frame = Frame(int(stamps[i]), gray, rgb, camera)
        t1 = now_s()
        result = pipeline.track(frame, on_pose)     # TF goes out before the motion graph runs
        tracked = result.state == TrackingState.TRACKING and result.T_world_cam is not None
        t2, t3 = published["start"], published["end"]
        result = pipeline.densify(result)
        t4 = now_s()
        cloud_bytes = 0
        if result.cloud is not None and len(result.cloud):
            cloud_bytes = len(cloud_to_array(result.cloud, T_odom_world).tobytes())
            if result.map_cloud is not None and len(result.map_cloud):
                cloud_to_array(result.map_cloud, T_odom_world).tobytes()
        t5 = now_s()
        if gpu and _cuda_in_use():
            free, total = torch.cuda.mem_get_info()
            gpu_used_peak = max(gpu_used_peak, (total - free) / 2**20)
        if tracked:
            poses.append(result.T_world_cam.copy())
            pose_stamps.append(int(stamps[i]))
            gt.append(seq.T_world_cam[order[i]])
        if i < warmup:
            continue
        ms = {k: float(v) for k, v in result.timings_ms.items() if k != "total"}
        for k in ms:
            if k not in stage_keys:
                stage_keys.append(k)
        ms["decode"] = (t1 - t0) * 1e3
        ms["publish_tf"] = (t3 - t2) * 1e3
        ms["publish_cloud"] = (t5 - t4) * 1e3
        wall = (t5 - t0) * 1e3
        ms["other"] = max(0.0, wall - sum(ms.values()))
        has_cloud = cloud_bytes > 0
        n_clouds += has_cloud
        rows.append({"ms": ms, "wall": wall, "pose_latency": (t3 - t0) * 1e3,
                     "cloud_latency": (t5 - t0) * 1e3 if has_cloud else None,
                     "points": len(result.cloud) if has_cloud else 0})
    loop_s = now_s() - t_loop
    measured = len(rows)

    keys = [k for k in STAGE_ORDER if k in stage_keys or k in ("decode", "publish_tf", "publish_cloud", "other")]
    keys += [k for k in stage_keys if k not in keys]
    stages = {k: percentiles([r["ms"].get(k, 0.0) for r in rows]) for k in keys}
    mem = _memory_summary(seq, rss_start, torch if gpu else None, gpu_used_peak)
    return {
        "mode": "pipeline", "label": label, "size": f"{W}x{H}", "width": W, "height": H,
        "sequence": seq.name, "unique_frames": len(seq), "frames": n_frames, "warmup": warmup,
        "measured": measured, "params": params,
        "runtime": str(getattr(pipeline, "runtime", "")),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "fps": measured / loop_s, "wall_s": loop_s,
        "clouds": n_clouds, "cloud_hz": n_clouds / loop_s,
        "cloud_points_mean": float(np.mean([r["points"] for r in rows if r["points"]])) if n_clouds else 0.0,
        "frame_ms": percentiles([r["wall"] for r in rows]),
        "latency_ms": {"pose": percentiles([r["pose_latency"] for r in rows]),
                       "cloud": percentiles([r["cloud_latency"] for r in rows if r["cloud_latency"] is not None])},
        "stages_ms": stages, "memory": mem,
        "tracking": _tracking_summary(pose_stamps, poses, gt, n_frames),
        "load_avg_start": load_start, "load_avg_end": load_average(),
    }


def run_staged(seq: BenchSequence, params: dict, n_frames: int, warmup: int, rate_hz: float,
               label: str = "", prewarm: int = 0) -> dict:
    """Time frames through the overlapped stages (``core/staged.py``), as the node runs them.

    ``rate_hz`` > 0: a camera thread offers frame i at start + i / rate into a one-slot buffer
    (a newer frame replaces one not yet taken, as in the node); the frontend loop takes the
    newest, converts it and submits it. Latency = pose callback (after the TF payload) - the
    moment the frame was offered. ``rate_hz`` 0: frames are offered as fast as the frontend
    takes them (throughput). FPS = poses per second of the measured span; clouds/s likewise.
    Stage times are the pipeline's own clocks (no CUDA synchronisation: stages overlap).

    ``prewarm`` > 0: before the camera starts, that many frames go through unpaced and unmeasured,
    then the pipeline is reset (as after a tracking loss) and the measured run starts from frame 0.
    A process's one-time start-up work (loading networks, CUDA contexts, autotuning, CUDA-graph
    capture) is then behind it, as in a node that has been running, while the map's
    initialisation stays in the measured run. Without it, start-up falls into the measured
    frames whenever it outlasts ``warmup`` camera frames."""
    import threading

    import cv2  # noqa: F401
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.image import decode_image
    from sirenpose_ros.core.pipeline import Pipeline
    from sirenpose_ros.core.staged import StagedRunner
    from sirenpose_ros.core.types import Frame, TrackingState
    from sirenpose_ros.synth.sequence import frame_stamps

    W, H, order, stamps, camera = _bench_frames(seq, n_frames, warmup)
    torch = sys.modules.get("torch")
    gpu = torch is not None and torch.cuda.is_available()
    load_start = load_average()
    rss_start = _reset_memory_peaks(torch if gpu else None)
    pipeline = Pipeline(make_config(params), async_mapping=True)
    T_odom_world = T_BASE_OPTICAL

    offered = {}                 # frame index -> offer time
    pose_rows, cloud_rows, errors = {}, {}, []     # frame index -> (time, result)
    tf_times = {}                # frame index -> time its TF payload was ready
    gpu_used_peak = [0.0]

    measuring = [prewarm <= 0]

    def on_pose(pose):
        if not measuring[0]:
            return
        if pose.state == TrackingState.TRACKING and pose.T_world_cam is not None:
            tf_payload(pose.T_world_cam, T_odom_world)
        tf_times[index_of[pose.stamp_ns]] = now_s()

    def on_frame(result):
        if not measuring[0]:
            return
        pose_rows[index_of[result.stamp_ns]] = (now_s(), result)

    def on_dense(result):
        if not measuring[0]:
            return
        i = index_of[result.stamp_ns]
        t0 = now_s()
        if result.cloud is not None and len(result.cloud):
            cloud_to_array(result.cloud, T_odom_world).tobytes()
            if result.map_cloud is not None and len(result.map_cloud):
                cloud_to_array(result.map_cloud, T_odom_world).tobytes()
            cloud_rows[i] = (now_s(), (now_s() - t0) * 1e3)
        if gpu and _cuda_in_use():
            free, total = torch.cuda.mem_get_info()
            gpu_used_peak[0] = max(gpu_used_peak[0], (total - free) / 2**20)

    index_of = {int(s): i for i, s in enumerate(stamps)}
    # No CUDA synchronisation here (unlike pipeline mode): it would serialise the overlapped
    # stages, and a synchronise from one thread during another's CUDA-graph capture is an error.
    now_s = time.perf_counter
    runner = StagedRunner(pipeline, on_frame, on_dense, lambda stage, exc: errors.append(f"{stage}: {exc}"),
                          on_pose=on_pose)
    for i in range(min(prewarm, n_frames)):
        gray, rgb = decode_image("rgb8", W, H, 3 * W, seq.images[order[i]])
        runner.submit(Frame(int(stamps[i]), gray, rgb, camera))
    if prewarm > 0:
        runner.reset()                    # drains first; the measured run starts a new map
        # Errors during the pre-warm stay in the report, marked as such.
        errors[:] = [f"prewarm: {e}" for e in errors]
        measuring[0] = True
    slot = {"i": None}
    cond = threading.Condition()
    done = threading.Event()
    dropped = [0]

    def camera_thread():
        start = now_s()
        for i in range(n_frames):
            if rate_hz > 0:
                delay = start + i / rate_hz - now_s()
                if delay > 0:
                    time.sleep(delay)
            with cond:
                if rate_hz <= 0:
                    cond.wait_for(lambda: slot["i"] is None)
                elif slot["i"] is not None:
                    dropped[0] += 1 if slot["i"] >= warmup else 0
                slot["i"] = i
                offered[i] = now_s()
                cond.notify_all()
        done.set()
        with cond:
            cond.notify_all()

    decode_ms, frontend_start = {}, {}
    cam_t = threading.Thread(target=camera_thread, daemon=True)
    cam_t.start()
    while True:
        runner.wait_ready()               # take the newest frame only when it can start
        with cond:
            cond.wait_for(lambda: slot["i"] is not None or done.is_set())
            i, slot["i"] = slot["i"], None
            cond.notify_all()
        if i is None:
            break
        t0 = now_s()
        gray, rgb = decode_image("rgb8", W, H, 3 * W, seq.images[order[i]])
        decode_ms[i] = (now_s() - t0) * 1e3
        frontend_start[i] = now_s()
        runner.submit(Frame(int(stamps[i]), gray, rgb, camera))
    runner.drain()
    runner.close()
    cam_t.join()

    measured = sorted(i for i in pose_rows if i >= warmup)
    t_first = offered[warmup] if warmup in offered else min(offered[i] for i in measured)
    t_last = max([pose_rows[i][0] for i in measured] + [cloud_rows[i][0] for i in cloud_rows if i >= warmup])
    span = max(t_last - t_first, 1e-9)
    keyframes = [i for i in measured if pose_rows[i][1].is_keyframe]
    t_init = offered[keyframes[0]] if keyframes else t_first
    n_clouds = sum(1 for i in cloud_rows if i >= warmup)
    keys = []
    for i in measured:
        for k in pose_rows[i][1].timings_ms:
            if k != "total" and k not in keys:
                keys.append(k)
    stages = {}
    for k in ["decode"] + [k for k in STAGE_ORDER if k in keys] + [k for k in keys if k not in STAGE_ORDER]:
        vals = [decode_ms[i] if k == "decode" else pose_rows[i][1].timings_ms.get(k, 0.0) for i in measured]
        stages[k] = percentiles(vals)
    stages["publish_cloud"] = percentiles([cloud_rows[i][1] for i in cloud_rows if i >= warmup] or [0.0])
    poses, pose_stamps, gt = [], [], []
    for i in sorted(pose_rows):
        r = pose_rows[i][1]
        if r.state == TrackingState.TRACKING and r.T_world_cam is not None:
            poses.append(r.T_world_cam.copy())
            pose_stamps.append(int(stamps[i]))
            gt.append(seq.T_world_cam[order[i]])
    mem = _memory_summary(seq, rss_start, torch if gpu else None, gpu_used_peak[0])
    return {
        "mode": "staged", "label": label, "size": f"{W}x{H}", "width": W, "height": H,
        "sequence": seq.name, "unique_frames": len(seq), "frames": n_frames, "warmup": warmup, "prewarm": prewarm,
        "measured": len(measured), "params": params, "rate_hz": rate_hz,
        "frames_dropped": dropped[0], "dense_dropped": runner.dense_dropped, "errors": errors[:10],
        "runtime": str(getattr(pipeline, "runtime", "")),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "fps": len(measured) / span, "wall_s": span,
        "clouds": n_clouds, "cloud_hz": n_clouds / span,
        "latency_ms": {"pose": percentiles([(tf_times[i] - offered[i]) * 1e3 for i in measured]),
                       # frames offered 1 s or more after the first measured keyframe (the map's
                       # initialisation when the run starts a map): the tail without it
                       "pose_after_init": percentiles([(tf_times[i] - offered[i]) * 1e3 for i in measured
                                                       if offered[i] >= t_init + 1.0]),
                       # until the pose stage finished the frame (motion graph, keyframe decision)
                       "frame": percentiles([(pose_rows[i][0] - offered[i]) * 1e3 for i in measured]),
                       "cloud": percentiles([(cloud_rows[i][0] - offered[i]) * 1e3 for i in cloud_rows
                                             if i >= warmup])},
        "stages_ms": stages, "memory": mem,
        # What the slowest poses spent their time on (the p99 is made of frames like these).
        "slowest_poses": [{"index": i, "tf_latency_ms": (tf_times[i] - offered[i]) * 1e3,
                           "frontend_start_ms": (frontend_start[i] - offered[i]) * 1e3,
                           "keyframe": bool(pose_rows[i][1].is_keyframe),
                           "timings_ms": {k: round(v, 2) for k, v in pose_rows[i][1].timings_ms.items()}}
                          for i in sorted(measured, key=lambda i: tf_times[i] - offered[i])[-6:]],
        # Per measured frame, to see when the tail happens (initialisation, keyframes, clouds).
        "per_frame": {"index": measured,
                      "tf_ms": [round((tf_times[i] - offered[i]) * 1e3, 2) for i in measured],
                      **{f"{k}_ms": [round(pose_rows[i][1].timings_ms.get(k, 0.0), 2) for i in measured]
                         for k in ("frontend", "window", "field")},
                      "keyframe": [bool(pose_rows[i][1].is_keyframe) for i in measured]},
        "tracking": _tracking_summary(pose_stamps, poses, gt, n_frames),
        "events": _tracking_events(pose_rows),
        "load_avg_start": load_start, "load_avg_end": load_average(),
    }


def _tracking_events(pose_rows: dict, limit: int = 80) -> list[dict]:
    """The pipeline's messages (initialisation, losses, resets, why a map is not built yet) as
    they change, per frame index: what happened to tracking during a run, e.g. when its ATE is
    off. A message repeated on consecutive frames is kept once."""
    events, last = [], None
    for i in sorted(pose_rows):
        r = pose_rows[i][1]
        if r.message and r.message != last:
            events.append({"index": i, "state": r.state.value, "message": r.message[:200]})
        last = r.message
    return events[:limit]


# ============================================================================ live mode

def run_live(seq: BenchSequence, node_params: dict, n_frames: int, warmup: int, rate_hz: float,
             label: str = "", log_path: Path | None = None, quiet_s: float = 2.0,
             torch_threads: int = 0) -> dict:
    """Start the node process, publish ``n_frames`` at ``rate_hz`` (stamp = publish wall time) and
    time the odom -> base TF and the clouds coming back. DDS must already be confined
    (:func:`sirenpose_ros.ros.dds.confine_this_process`, done by :func:`main`).
    ``torch_threads`` > 0 starts the node with OMP_NUM_THREADS set (torch's intra-op threads)."""
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from tf2_msgs.msg import TFMessage

    from sirenpose_ros.ros import dds, spawn
    from sirenpose_ros.ros.messages import ns_to_stamp, stamp_to_ns

    if not dds.is_confined():
        raise RuntimeError("DDS is not confined to this host: call dds.confine_this_process() first")
    if n_frames <= warmup:
        raise ValueError(f"--frames ({n_frames}) must exceed --warmup ({warmup})")
    W, H = seq.width, seq.height
    order = pingpong(len(seq), n_frames)
    base_frame = str(node_params.get("base_frame", "base_link"))
    image_topic, info_topic = "/bench/image_raw", "/bench/camera_info"
    params = {"extrinsics_source": "parameters", **node_params}
    load_start = load_average()
    env = dict(os.environ)
    if torch_threads > 0:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    proc = spawn.start(spawn.node_command(params, {"image": image_topic, "camera_info": info_topic}),
                       env, log_path)

    if not rclpy.ok():
        rclpy.init()
    node = rclpy.create_node("sirenpose_benchmark")
    qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)
    pub_image = node.create_publisher(Image, image_topic, qos)
    pub_info = node.create_publisher(CameraInfo, info_topic, qos)
    lock = threading.Lock()
    tf_arrivals: dict[int, tuple[int, list]] = {}     # image stamp -> (arrival ns, [x, y, z])
    cloud_arrivals: dict[int, int] = {}
    diag: dict[str, str] = {}

    def on_tf(msg: TFMessage) -> None:
        t = time.time_ns()
        for tr in msg.transforms:
            if tr.child_frame_id == base_frame:
                p = tr.transform.translation
                with lock:
                    tf_arrivals.setdefault(stamp_to_ns(tr.header.stamp), (t, [p.x, p.y, p.z]))

    def on_cloud(msg: PointCloud2) -> None:
        t = time.time_ns()
        with lock:
            cloud_arrivals.setdefault(stamp_to_ns(msg.header.stamp), t)

    def on_diag(msg: DiagnosticArray) -> None:
        with lock:
            for s in msg.status:
                diag.update({kv.key: kv.value for kv in s.values})

    reliable = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=100)
    node.create_subscription(TFMessage, "/tf", on_tf, reliable)
    node.create_subscription(PointCloud2, "cloud", on_cloud, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, reliable)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    def node_log() -> str:
        return log_path.read_text()[-3000:] if log_path and log_path.exists() else ""

    try:
        deadline = time.monotonic() + 60.0
        while (pub_image.get_subscription_count() == 0 or pub_info.get_subscription_count() == 0
               or node.count_publishers("/tf") == 0 or node.count_publishers("cloud") == 0):
            if proc.poll() is not None:
                raise RuntimeError(f"node exited early:\n{node_log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node did not connect within 60 s:\n{node_log()}")
            time.sleep(0.05)
        time.sleep(0.5)   # let the node's cloud publisher see our subscription

        K = seq.K
        info = CameraInfo(width=W, height=H, distortion_model="plumb_bob", d=[0.0] * 5,
                          k=[float(v) for v in K.reshape(9)], r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                          p=[float(K[0, 0]), 0, float(K[0, 2]), 0, 0, float(K[1, 1]), float(K[1, 2]), 0,
                             0, 0, 1.0, 0])
        info.header.frame_id = "camera_optical_frame"
        published: list[int] = []
        period = 1.0 / rate_hz
        start = time.perf_counter()
        for i in range(n_frames):
            msg = Image(height=H, width=W, encoding="rgb8", is_bigendian=0, step=3 * W,
                        data=seq.images[order[i]])
            msg.header.frame_id = "camera_optical_frame"
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            stamp = time.time_ns()
            info.header.stamp = msg.header.stamp = ns_to_stamp(stamp)
            pub_info.publish(info)
            pub_image.publish(msg)
            published.append(stamp)
        publish_s = time.perf_counter() - start
        # Wait until the node has caught up: no new TF for quiet_s seconds.
        last_n, since, stop_at = -1, time.monotonic(), time.monotonic() + 60.0
        while time.monotonic() - since < quiet_s and time.monotonic() < stop_at:
            with lock:
                n = len(tf_arrivals) + len(cloud_arrivals)
            if n != last_n:
                last_n, since = n, time.monotonic()
            time.sleep(0.05)
        node_mem = _proc_status(proc.pid)
        time.sleep(1.2)   # one more diagnostics period for the final counters
        with lock:
            counters = dict(diag)
    finally:
        rc = spawn.stop(proc)
        executor.shutdown()
        node.destroy_node()

    measured = published[warmup:]
    t_first, t_last = measured[0], measured[-1]
    with lock:
        tf = {s: v for s, v in tf_arrivals.items() if s in set(measured)}
        clouds = {s: v for s, v in cloud_arrivals.items() if s in set(measured)}
    window_s = (t_last - t_first) / 1e9 + period
    tf_lat = [(v[0] - s) / 1e6 for s, v in tf.items()]
    cloud_lat = [(v - s) / 1e6 for s, v in clouds.items()]
    # Accuracy sanity: camera (= base, zero extrinsic translation) positions against ground truth.
    index = {s: order[i] for i, s in enumerate(published)}
    tracking = {"tracked_share": len(tf) / len(measured), "n_poses": len(tf)}
    if len(tf) >= 3:
        from sirenpose_ros.eval.metrics import ate
        keys = sorted(tf)
        est = np.tile(np.eye(4), (len(keys), 1, 1))
        est[:, :3, 3] = [tf[s][1] for s in keys]
        try:
            a = ate(est, seq.T_world_cam[[index[s] for s in keys]], align="sim3")
            tracking.update(ate_rmse=a["rmse"], ate_scale=a["scale"])
        except ValueError:
            pass
    keep = ("frames_received", "frames_processed", "frames_dropped", "latency_p50_ms",
            "latency_p99_ms", "rss_mb", "gpu_mem_mb", "runtime", "resets", "tracking_lost")
    return {
        "mode": "live", "label": label, "size": f"{W}x{H}", "width": W, "height": H,
        "sequence": seq.name, "unique_frames": len(seq), "frames": n_frames, "warmup": warmup,
        "measured": len(measured), "params": node_params, "rate_hz": rate_hz,
        "node_omp_threads": torch_threads or None,
        "input_hz": (len(published) - 1) / publish_s if len(published) > 1 else 0.0,
        "output_hz": len(tf) / window_s, "cloud_hz": len(clouds) / window_s,
        "frames_without_tf": len(measured) - len(tf),
        "latency_ms": {"pose": percentiles(tf_lat), "cloud": percentiles(cloud_lat)},
        "node": {"peak_rss_mb": node_mem.get("VmHWM", float("nan")),
                 "rss_mb": node_mem.get("VmRSS", float("nan")), "exit_code": rc,
                 **{k: counters[k] for k in keep if k in counters},
                 "last_stage_ms": {k[6:-3]: counters[k] for k in counters if k.startswith("stage_")}},
        "tracking": tracking,
        "load_avg_start": load_start, "load_avg_end": load_average(),
    }


# ============================================================================ tables

def _f(v, fmt: str = ".1f") -> str:
    try:
        return "-" if v is None or not np.isfinite(v) else format(v, fmt)
    except TypeError:
        return str(v)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


# "Same poses" tolerance between two runs of one sequence (e.g. the GPU path against the CPU
# path): ground-truth units (metres on the synthetic presets). Bit-identical poses are not
# expected once a network runs in another precision or kernel order, so the runs must agree to
# within the estimator's own error: the ATE difference within 25 % of the reference ATE (at least
# 1 mm) and the trajectories within one reference ATE of each other (at least 2 mm).
POSE_TOL_DIFF = (0.001, 0.25)       # (absolute floor, share of the reference ATE)
POSE_TOL_BETWEEN = (0.002, 1.0)


def compare_poses(ref: dict, run: dict) -> dict | None:
    """Agreement of two runs' trajectories on the frames both tracked: ATE of ``run`` against
    ``ref`` (Sim(3)-aligned, in ground-truth units after scaling ``ref`` by its own ATE scale),
    the difference of their ATEs against the ground truth, and whether both are within the
    POSE_TOL_* tolerance."""
    from sirenpose_ros.eval.metrics import ate
    a, b = ref.get("tracking", {}).get("poses"), run.get("tracking", {}).get("poses")
    if not a or not b:
        return None
    ia = {s: i for i, s in enumerate(a["stamps_ns"])}
    common = [(ia[s], j) for j, s in enumerate(b["stamps_ns"]) if s in ia]
    if len(common) < 3:
        return None

    def mats(rows, idx):
        T = np.tile(np.eye(4), (len(idx), 1, 1))
        T[:, :3, :] = np.asarray([rows[i] for i in idx]).reshape(-1, 3, 4)
        return T
    Ta = mats(a["T"], [i for i, _ in common])
    Ta[:, :3, 3] *= ref["tracking"].get("ate_scale", 1.0)
    Tb = mats(b["T"], [j for _, j in common])
    out = {"n_common": len(common), "ate_between": ate(Tb, Ta, align="sim3")["rmse"]}
    if ref.get("frames") != run.get("frames") and "ate_rmse" in ref["tracking"]:
        # Runs of different lengths (e.g. a short CPU reference): their ATEs against the ground
        # truth cover different frames, so only the trajectories' agreement is judged.
        out["within_tolerance"] = bool(
            out["ate_between"] <= max(POSE_TOL_BETWEEN[0], POSE_TOL_BETWEEN[1] * ref["tracking"]["ate_rmse"]))
    elif "ate_rmse" in ref["tracking"] and "ate_rmse" in run["tracking"]:
        a_ref = ref["tracking"]["ate_rmse"]
        out["ate_diff"] = abs(run["tracking"]["ate_rmse"] - a_ref)
        out["within_tolerance"] = bool(
            out["ate_diff"] <= max(POSE_TOL_DIFF[0], POSE_TOL_DIFF[1] * a_ref)
            and out["ate_between"] <= max(POSE_TOL_BETWEEN[0], POSE_TOL_BETWEEN[1] * a_ref))
    return out


def render_markdown(docs: list[dict], reference: str | None = None,
                    published_line: bool = True) -> str:
    """Markdown tables for the runs of one or more JSON documents (see :func:`main`)."""
    out = []
    for doc in docs:
        out += [f"- command: `{doc.get('command', '')}`",
                f"- commit `{doc.get('commit', '?')}`, date {doc.get('date', '?')}",
                f"- host: {doc.get('host', {}).get('cpu', '?')} ({doc.get('host', {}).get('cpus', '?')} "
                f"CPUs){', GPU ' + doc['host']['gpu'] if doc.get('host', {}).get('gpu') else ''}, "
                f"torch {doc.get('host', {}).get('torch', '-')}"]
    out.append("")
    runs = [r for d in docs for r in d.get("runs", [])]
    pipe = [r for r in runs if r["mode"] in ("pipeline", "staged")]
    live = [r for r in runs if r["mode"] == "live"]
    if pipe:
        out += ["| run | size | frames | FPS | clouds/s | pose latency p50 / p99 ms | cloud latency "
                "p50 / p99 ms | peak RSS MB (input frames held) | GPU peak MB (alloc / device) | tracked | ATE rmse | load avg start -> end |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in pipe:
            m, lat, tr = r["memory"], r["latency_ms"], r["tracking"]
            gpu = (f"{_f(m['gpu_peak_allocated_mb'], '.0f')} / {_f(m['gpu_device_used_peak_mb'], '.0f')}"
                   if "gpu_peak_allocated_mb" in m else "-")
            out.append(
                f"| {r['label']} | {r['size']} | {r['measured']} | {_f(r['fps'])} | {_f(r['cloud_hz'])} | "
                f"{_f(lat['pose']['p50'])} / {_f(lat['pose']['p99'])} | "
                f"{_f(lat['cloud']['p50'])} / {_f(lat['cloud']['p99'])} | {_f(m['peak_rss_mb'], '.0f')} "
                f"({_f(m['input_frames_mb'], '.0f')}) | {gpu} | {100 * tr['tracked_share']:.0f} % | {_f(tr.get('ate_rmse'), '.3f')} | "
                f"{_f(r['load_avg_start'][0] if r['load_avg_start'] else None, '.1f')} -> "
                f"{_f(r['load_avg_end'][0] if r['load_avg_end'] else None, '.1f')} |")
        keys = []
        for r in pipe:
            keys += [k for k in r["stages_ms"] if k not in keys]
        keys = [k for k in STAGE_ORDER if k in keys] + [k for k in keys if k not in STAGE_ORDER]
        out += ["", "Per-stage time, mean (p99) ms per measured frame:", "",
                "| run | size | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for r in pipe:
            cells = [f"{_f(r['stages_ms'][k]['mean'])} ({_f(r['stages_ms'][k]['p99'])})"
                     if k in r["stages_ms"] else "-" for k in keys]
            out.append(f"| {r['label']} | {r['size']} | " + " | ".join(cells) + " |")
        out += ["", "Stages: " + "; ".join(f"`{k}` {STAGE_NAMES[k]}" for k in keys if k in STAGE_NAMES) + ".",
                "", "Parameters: " + "; ".join(
                    f"{r['label']} {r['size']}: {_params_text(r['params'])}, torch threads {r.get('torch_threads')}"
                    for r in pipe) + "."]
        staged = [r for r in pipe if r["mode"] == "staged"]
        if staged:
            out += ["", "Staged runs (overlapped frontend / pose / map / dense threads, `--staged`): " + "; ".join(
                f"{r['label']} {r['size']}: camera "
                + (f"{r['rate_hz']:g} Hz, {r['frames_dropped']} of {r['measured'] + r['frames_dropped']} measured frames dropped before the frontend"
                   if r["rate_hz"] > 0 else "unpaced (throughput)")
                + f", {r['dense_dropped']} clouds skipped by the dense stage" for r in staged)
                + ". Their latency runs from the moment the camera offered the frame to the pose callback; "
                "stage times overlap (the pipeline's own clocks, no CUDA synchronisation)."]
        if any(not r.get("track_densify_split", True) for r in pipe):
            out += ["", "Runs without the track/densify split time `process`: their TF waits for the dense stages."]
    if reference:
        refs = {(r["size"], r["sequence"]): r for r in pipe if r["label"] == reference}
        lines = []
        for r in pipe:
            ref = refs.get((r["size"], r["sequence"]))
            if ref is None or r is ref:
                continue
            c = compare_poses(ref, r)
            if c:
                verdict = {True: "yes", False: "**no**"}.get(c.get("within_tolerance"), "-")
                lines.append(f"| {r['label']} vs {reference} | {r['size']} | {c['n_common']} | "
                             f"{_f(c['ate_between'], '.4f')} | {_f(c.get('ate_diff'), '.4f')} | {verdict} |")
        if lines:
            out += ["", f"Pose agreement with `{reference}` (same sequence and size):", "",
                    "| runs | size | common poses | ATE between the runs | ATE difference vs ground truth | "
                    "within tolerance |", "|---|---|---|---|---|---|", *lines,
                    "", f"Tolerance: ATE difference <= max({POSE_TOL_DIFF[0]}, {POSE_TOL_DIFF[1]} x reference "
                    f"ATE) and ATE between the runs <= max({POSE_TOL_BETWEEN[0]}, {POSE_TOL_BETWEEN[1]} x "
                    "reference ATE), ground-truth units."]
    if live:
        out += ["", "| run (live node) | size | publish Hz | TF Hz | frames without TF | image->TF p50 / p99 ms | "
                "clouds/s | image->cloud p50 / p99 ms | node dropped / received | node peak RSS MB | frames with TF | ATE rmse | load avg start -> end |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in live:
            lat, n, tr = r["latency_ms"], r["node"], r["tracking"]
            out.append(
                f"| {r['label']} | {r['size']} | {_f(r['input_hz'])} | {_f(r['output_hz'])} | "
                f"{r['frames_without_tf']} / {r['measured']} | {_f(lat['pose']['p50'])} / {_f(lat['pose']['p99'])} | "
                f"{_f(r['cloud_hz'])} | {_f(lat['cloud']['p50'])} / {_f(lat['cloud']['p99'])} | "
                f"{n.get('frames_dropped', '-')} / {n.get('frames_received', '-')} | {_f(n['peak_rss_mb'], '.0f')} | "
                f"{100 * tr['tracked_share']:.0f} % | {_f(tr.get('ate_rmse'), '.3f')} | "
                f"{_f(r['load_avg_start'][0] if r['load_avg_start'] else None, '.1f')} -> "
                f"{_f(r['load_avg_end'][0] if r['load_avg_end'] else None, '.1f')} |")
        out += ["", "Parameters: " + "; ".join(
            f"{r['label']} {r['size']}: {_params_text(r['params'])}"
            + (f", node OMP_NUM_THREADS={r['node_omp_threads']}" if r.get("node_omp_threads") else "")
            for r in live) + "."]
    if published_line:
        out += ["", PUBLISHED_REFERENCE]
    return "\n".join(out) + "\n"


# ============================================================================ command line

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sirenpose_benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", type=Path, help="--mode report: JSON files to merge")
    ap.add_argument("--mode", choices=("pipeline", "live", "report"), default="pipeline")
    ap.add_argument("--size", default="640x480", help="comma-separated WIDTHxHEIGHT list (default 640x480)")
    ap.add_argument("--frames", type=int, default=150, help="frames processed per size, warm-up included")
    ap.add_argument("--warmup", type=int, default=20, help="first frames not counted (default 20)")
    ap.add_argument("--render-frames", type=int, default=None,
                    help="distinct frames rendered (default --frames); fewer are replayed ping-pong")
    ap.add_argument("--preset", default="easy", help="synthetic preset (default easy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=float, default=30.0,
                    help="frame rate the sequence is rendered at (default 30): the camera motion per "
                         "frame, and the stamps, follow it; measure a 60 Hz camera on a 60 fps "
                         "rendering, or the camera moves twice as far between frames as a real one")
    ap.add_argument("--sequence", type=Path, default=None,
                    help="a directory written by write_sequence instead of rendering (one size)")
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get(
        "XDG_CACHE_HOME", Path.home() / ".cache")) / "sirenpose_ros" / "benchmark",
        help="where rendered frames are cached ('' disables)")
    ap.add_argument("--render-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="pipeline (and, live, node) parameter; repeatable")
    ap.add_argument("--rate", type=float, default=30.0, help="live: publish rate in Hz (default 30)")
    ap.add_argument("--staged", action="store_true",
                    help="pipeline: run the overlapped stages of core/staged.py (as the node does)")
    ap.add_argument("--prewarm", type=int, default=0,
                    help="--staged: frames run unpaced and unmeasured before the camera starts, then a pipeline "
                         "reset (one-time start-up work out of the measured run; the map's initialisation stays in it)")
    ap.add_argument("--camera-rate", type=float, default=0.0,
                    help="pipeline --staged: offer frames at this rate in Hz, newest frame kept "
                         "(0 = as fast as the frontend takes them)")
    ap.add_argument("--label", default="", help="name of this configuration in the tables")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the table here")
    ap.add_argument("--reference", default=None, help="report: compare poses against this label")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads before the pipeline is built: pipeline mode sets them "
                         "in this process, live mode starts the node with OMP_NUM_THREADS (0: torch's "
                         "default). The pipeline's own pipeline_torch_threads (if > 0) overrides it.")
    ap.add_argument("--commit", default=None, help="commit id to record (default: git of the source)")
    ap.add_argument("--log-dir", type=Path, default=None, help="live: keep the node log here")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "sirenpose_benchmark " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.mode == "report":
        if not args.inputs:
            print("--mode report needs JSON files", file=sys.stderr)
            return 2
        docs = [json.loads(p.read_text()) for p in args.inputs]
        text = render_markdown(docs, args.reference)
        if args.markdown:
            args.markdown.write_text(text)
        print(text)
        return 0

    pairs = [parse_param(p) for p in args.param]
    from sirenpose_ros.core.config import pipeline_params
    if args.mode == "live":
        # Before rclpy is imported anywhere: DDS stays on this host, in a private domain.
        from sirenpose_ros.ros.dds import confine_this_process, private_domain_id
        confine_this_process(private_domain_id())
        from sirenpose_ros.ros.node_params import NODE_PARAMS
        params = typed_params(pairs, pipeline_params() + NODE_PARAMS)
    else:
        params = typed_params(pairs, pipeline_params())
        from sirenpose_ros.core.config import make_config
        make_config(params)    # refuse bad values before anything is rendered

    sizes = [parse_size(s) for s in args.size.split(",") if s.strip()]
    doc = {"tool": "sirenpose_benchmark", "command": command, "commit": args.commit or commit_id(),
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "host": host_info(), "runs": []}
    cache = args.cache_dir if str(args.cache_dir) else None
    for w, h in sizes:
        if args.sequence is not None:
            seq = sequence_from_dir(args.sequence)
        else:
            t0 = time.perf_counter()
            seq = cached_frames(args.preset, args.seed, args.render_frames or args.frames, w, h,
                                cache, args.render_workers, fps=args.fps)
            print(f"[benchmark] {len(seq)} frames {w}x{h} ready in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
        label = args.label or ("live" if args.mode == "live" else "pipeline")
        if args.mode == "live":
            log = None
            if args.log_dir:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                log = args.log_dir / f"node_{label}_{seq.width}x{seq.height}.log"
            run = run_live(seq, params, args.frames, args.warmup, args.rate, label, log,
                           torch_threads=args.torch_threads)
        else:
            if args.torch_threads > 0:
                import torch
                torch.set_num_threads(args.torch_threads)
            if args.staged:
                run = run_staged(seq, params, args.frames, args.warmup, args.camera_rate, label, args.prewarm)
            else:
                run = run_pipeline(seq, params, args.frames, args.warmup, label)
        doc["runs"].append(run)
        lat = run["latency_ms"]["pose"]
        print(f"[benchmark] {label} {run['size']}: "
              f"{run.get('fps', run.get('output_hz', 0.0)):.1f} {'FPS' if args.mode == 'pipeline' else 'TF/s'}, "
              f"pose latency p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms, clouds {run['cloud_hz']:.1f}/s",
              file=sys.stderr)
        if args.json:     # written after every size so a long run keeps what it measured
            args.json.write_text(json.dumps(doc, indent=1) + "\n")
    text = render_markdown([doc])
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
