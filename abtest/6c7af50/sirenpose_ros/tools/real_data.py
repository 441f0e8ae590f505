"""Plausibility checks of the pipeline on real frames (no ground truth): does it track through,
what does it label dynamic, and do its relative poses agree with an offline SfM reconstruction.

    sirenpose_real IMAGE_DIR --out DIR [--fx F --fy F --cx C --cy C] [--fps 24]
        [--param NAME:=VALUE ...] [--sfm none|sequential|exhaustive] [--overlay-frames 4]
        [--overlay PNG]

Intrinsics default to the approximation a user without calibration would take: fx = fy = image
width, principal point at the image centre. Frame stamps come from the file names when they are
numbers (TUM: seconds), else from --fps. Every frame is processed in order; nothing is dropped.

Outputs in DIR:
  trajectory.tum     T_world_cam of every frame with a pose (the pipeline's world frame)
  frames.json        per frame: state, keypoints, dynamic keypoints, reset, message
  summary.json       tracking summary, FPS, and (with --sfm) the comparison with COLMAP
  overlay.png        keypoints coloured by p_dynamic on a few frames (also --overlay PATH)
  sfm.tum            COLMAP's poses (with --sfm)

Relative-pose agreement (with --sfm): for consecutive frames that both reconstructions posed,
the rotation error angle(R_pipe^T R_sfm) and the angle between the two translation directions
(scale-free, so two up-to-scale reconstructions can be compared) in degrees.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from sirenpose_ros.core.params import parse_assignments

DYNAMIC_THRESHOLD = 0.5
START_NS = 1_000_000_000
MIN_EPOCH_S = 1_000_000     # file names above this many seconds are stamps


def frame_stamps(names: list[str], fps: float) -> tuple[np.ndarray, str]:
    """Stamps (int ns) from numeric file names (seconds, e.g. TUM '1341847980.722988.png'),
    else START_NS + i / fps. -> (stamps, 'file names' | 'fps')."""
    from decimal import Decimal, InvalidOperation
    try:
        stamps = np.array([int(Decimal(Path(n).stem) * 10**9) for n in names], np.int64)
        # '00000.jpg' is numeric too: names are seconds only if they look like epoch times
        # (after MIN_EPOCH_S) and increase strictly.
        if stamps.size and stamps.min() > MIN_EPOCH_S * 10**9 and np.all(np.diff(stamps) > 0):
            return stamps, "file names"
    except InvalidOperation:
        pass
    return START_NS + np.round(np.arange(len(names)) * (1e9 / fps)).astype(np.int64), "fps"


def run_pipeline_on_folder(image_dir: Path, names: list[str], stamps: np.ndarray, K: np.ndarray,
                           values: dict) -> dict:
    """Process every image; -> per-frame results needed for the report (and timing)."""
    import cv2
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.pipeline import Pipeline
    from sirenpose_ros.core.types import Frame, TrackingState

    pipe = Pipeline(make_config(values))
    cam = None
    T = np.full((len(names), 4, 4), np.nan)
    frames, keypoints = [], []
    wall = 0.0
    for i, name in enumerate(names):
        bgr = cv2.imread(str(image_dir / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read {image_dir / name}")
        if cam is None:
            h, w = bgr.shape[:2]
            cam = CameraModel.pinhole(w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frame = Frame(int(stamps[i]), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), rgb, cam)
        t0 = time.perf_counter()
        res = pipe.process(frame)
        wall += time.perf_counter() - t0
        posed = res.state is TrackingState.TRACKING and res.T_world_cam is not None
        if posed:
            T[i] = res.T_world_cam
        p = np.asarray(res.dynamic_prob, np.float64)
        frames.append({"index": i, "name": name, "stamp_ns": int(stamps[i]),
                       "state": res.state.value, "posed": bool(posed), "reset": bool(res.reset),
                       "keyframe": bool(res.is_keyframe), "keypoints": int(p.size),
                       "dynamic_keypoints": int(np.count_nonzero(p > DYNAMIC_THRESHOLD)),
                       "message": res.message})
        keypoints.append((np.asarray(res.keypoints, np.float64).reshape(-1, 2), p))
    return {"T": T, "frames": frames, "keypoints": keypoints, "wall_s": wall,
            "image_size": (cam.width, cam.height) if cam is not None else None}


def tracking_summary(frames: list[dict], wall_s: float) -> dict:
    """Did it track through? Counted from the map's creation: the first posed keyframe (a
    pipeline may pose frames before it, e.g. rotation-only while waiting for parallax, and
    lose them again while it initialises; that is initialisation, not a tracking failure)."""
    from sirenpose_ros.eval.metrics import longest_lost_run
    posed = np.array([f["posed"] for f in frames], bool)
    resets = np.array([f["reset"] for f in frames], bool)
    mapped = posed & np.array([f.get("keyframe", False) for f in frames], bool)
    n = len(frames)
    first = int(np.argmax(posed)) if posed.any() else None
    init = int(np.argmax(mapped)) if mapped.any() else None
    after = posed[init:] if init is not None else np.zeros(0, bool)
    dyn = np.array([f["dynamic_keypoints"] for f in frames], float)
    kps = np.array([f["keypoints"] for f in frames], float)
    return {
        "frames": n, "frames_posed": int(posed.sum()), "first_pose_frame": first,
        "map_init_frame": init,
        "posed_share": float(posed.mean()) if n else 0.0,
        "posed_share_after_init": float(after.mean()) if after.size else 0.0,
        "resets": int(resets.sum()),
        "resets_after_init": int(resets[init + 1:].sum()) if init is not None else 0,
        "longest_lost_run_after_init": longest_lost_run(after) if after.size else n,
        # "tracked through": a pose on every frame from the map's creation on, no reset since.
        "tracked_through": bool(init is not None and after.all() and not resets[init + 1:].any()),
        "dynamic_keypoint_share_mean": float(np.mean(dyn / np.maximum(kps, 1))) if n else 0.0,
        "messages": sorted({f["message"] for f in frames if f["message"]}),
        "wall_s": wall_s, "fps": n / wall_s if wall_s > 0 else None,
    }


def overlay_figure(path: Path, image_dir: Path, names: list[str], keypoints: list, frames: list,
                   indices: list[int], max_bytes: int = 300_000) -> Path:
    """Keypoints coloured by p_dynamic (blue static -> red dynamic) on the chosen frames, in a
    2-column grid; saved as a palette PNG (photos in RGB PNG are several hundred KB)."""
    import cv2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    cols = 2 if len(indices) > 1 else 1
    rows = (len(indices) + cols - 1) // cols
    first = cv2.imread(str(image_dir / names[indices[0]]))
    aspect = first.shape[0] / first.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * aspect * rows + 0.5),
                             squeeze=False)
    sc = None
    for ax, i in zip(axes.flat, indices):
        rgb = cv2.cvtColor(cv2.imread(str(image_dir / names[i])), cv2.COLOR_BGR2RGB)
        kp, p = keypoints[i]
        ax.imshow(rgb)
        sc = ax.scatter(kp[:, 0], kp[:, 1], c=p, cmap="coolwarm", vmin=0.0, vmax=1.0, s=9,
                        edgecolors="black", linewidths=0.3)
        f = frames[i]
        ax.set_title(f"frame {i}: {f['state']}, {f['dynamic_keypoints']}/{f['keypoints']} "
                     f"dynamic", fontsize=8)
        ax.set_axis_off()
    for ax in list(axes.flat)[len(indices):]:
        ax.set_axis_off()
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes.ravel().tolist(), fraction=0.025, pad=0.01)
        cb.set_label("p_dynamic", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".rgb.png")
    for dpi in (110, 90, 72):
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        Image.open(tmp).convert("RGB").quantize(colors=192, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size <= max_bytes:
            break
    tmp.unlink(missing_ok=True)
    plt.close(fig)
    return path


def pick_overlay_frames(frames: list[dict], k: int) -> list[int]:
    """k frames spread over the posed frames from the map's creation (the first posed
    keyframe) on; all posed frames without a map, all frames if none is posed."""
    init = next((f["index"] for f in frames if f["posed"] and f.get("keyframe")), 0)
    posed = [f["index"] for f in frames if f["posed"] and f["index"] >= init]
    pool = posed if posed else [f["index"] for f in frames]
    if not pool:
        return []
    idx = np.linspace(0, len(pool) - 1, min(k, len(pool))).round().astype(int)
    return [pool[j] for j in dict.fromkeys(idx.tolist())]


def compare_with_sfm(T_pipe: np.ndarray, T_sfm: np.ndarray, resets: np.ndarray) -> dict:
    """Relative-pose agreement on consecutive frames both posed. A pair whose second frame
    reset the pipeline relates poses of two different maps (the pipeline keeps odometry
    continuous across a re-initialisation, but the scale may change), so the summary medians
    are given for pairs within one map and for all pairs."""
    from sirenpose_ros.eval.sfm_reference import relative_pose_errors
    both = np.isfinite(T_pipe).all(axis=(1, 2)) & np.isfinite(T_sfm).all(axis=(1, 2))
    out: dict = {"frames_both_posed": int(both.sum())}
    if not (both[:-1] & both[1:]).any():
        out.update(pairs=0, note="no consecutive pair posed by both")
        return out
    e = relative_pose_errors(T_pipe, T_sfm)
    across = np.asarray(resets, bool)[e["pairs"][:, 1]]
    within = ~across

    def med(x, m):
        x = x[m & np.isfinite(x)]
        return float(np.median(x)) if x.size else float("nan")
    out.update(pairs=e["n"], pairs_within_map=int(within.sum()),
               pair_indices=e["pairs"].tolist(), across_reset=across.tolist(),
               rot_err_deg=[round(float(x), 4) for x in e["rot_err_deg"]],
               dir_err_deg=[None if not np.isfinite(x) else round(float(x), 3)
                            for x in e["dir_err_deg"]],
               rot_median_deg=e["rot_median_deg"], dir_median_deg=e["dir_median_deg"],
               rot_median_deg_within_map=med(e["rot_err_deg"], within),
               dir_median_deg_within_map=med(e["dir_err_deg"], within),
               rot_max_deg=float(np.max(e["rot_err_deg"])),
               dir_max_deg=float(np.nanmax(e["dir_err_deg"])) if np.isfinite(e["dir_err_deg"]).any()
               else float("nan"))
    return out


def sfm_self_consistency(T_sfm: np.ndarray) -> dict:
    """Consecutive relative motions of the SfM poses (rotation angle, translation norm): the
    size of what the pipeline has to get right."""
    from sirenpose_ros.eval.metrics import rotation_angle
    ok = np.isfinite(T_sfm).all(axis=(1, 2))
    i = np.flatnonzero(ok[:-1] & ok[1:])
    if i.size == 0:
        return {}
    rel = np.linalg.inv(T_sfm[i]) @ T_sfm[i + 1]
    rot = np.degrees(rotation_angle(rel[:, :3, :3]))
    return {"sfm_rel_rot_deg_median": float(np.median(rot)),
            "sfm_rel_rot_deg_max": float(np.max(rot))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sirenpose_real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image_dir", type=Path, help="folder of images (sorted by name = frame order)")
    ap.add_argument("--out", type=Path, required=True)
    for k in ("fx", "fy", "cx", "cy"):
        ap.add_argument(f"--{k}", type=float, default=None)
    ap.add_argument("--fps", type=float, default=24.0,
                    help="frame rate when file names are not timestamps (default 24)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="pipeline parameter (repeatable)")
    ap.add_argument("--sfm", choices=("none", "sequential", "exhaustive"), default="none",
                    help="also reconstruct with COLMAP (pycolmap) and compare relative poses")
    ap.add_argument("--sfm-threads", type=int, default=2)
    ap.add_argument("--overlay-frames", type=int, default=4)
    ap.add_argument("--overlay", type=Path, default=None, help="copy of overlay.png here")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (default 1; 0 keeps torch's default)")
    args = ap.parse_args(argv)
    bad = [p for p in args.param if ":=" not in p]
    if bad:
        ap.error(f"--param expects NAME:=VALUE, got {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import cv2
    from sirenpose_ros.eval.sfm_reference import list_images
    from sirenpose_ros.io.tum import write_tum

    if args.torch_threads > 0:
        import torch
        torch.set_num_threads(args.torch_threads)
    names = list_images(args.image_dir)
    if len(names) < 2:
        print(f"error: {args.image_dir}: fewer than 2 images", file=sys.stderr)
        return 1
    h, w = cv2.imread(str(args.image_dir / names[0])).shape[:2]
    fx = args.fx if args.fx is not None else float(w)
    fy = args.fy if args.fy is not None else fx
    cx = args.cx if args.cx is not None else (w - 1) / 2.0
    cy = args.cy if args.cy is not None else (h - 1) / 2.0
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    stamps, stamp_source = frame_stamps(names, args.fps)
    values = parse_assignments(args.param)
    args.out.mkdir(parents=True, exist_ok=True)

    run = run_pipeline_on_folder(args.image_dir, names, stamps, K, values)
    T = run["T"]
    posed = np.isfinite(T).all(axis=(1, 2))
    write_tum(args.out / "trajectory.tum", stamps[posed], T[posed])
    (args.out / "frames.json").write_text(json.dumps(run["frames"], indent=1) + "\n")
    summary = {"image_dir": str(args.image_dir), "image_size": [w, h],
               "K": K.tolist(), "stamps_from": stamp_source, "params": values,
               **tracking_summary(run["frames"], run["wall_s"])}
    idx = pick_overlay_frames(run["frames"], args.overlay_frames)
    if idx:
        png = overlay_figure(args.out / "overlay.png", args.image_dir, names, run["keypoints"],
                             run["frames"], idx)
        summary["overlay_frames"] = idx
        if args.overlay is not None:
            args.overlay.parent.mkdir(parents=True, exist_ok=True)
            args.overlay.write_bytes(png.read_bytes())

    if args.sfm != "none":
        from sirenpose_ros.eval.sfm_reference import run_sfm
        sfm = run_sfm(args.image_dir, K, image_names=names, matching=args.sfm,
                      num_threads=args.sfm_threads)
        write_tum(args.out / "sfm.tum", stamps[sfm.registered], sfm.T_world_cam[sfm.registered])
        summary["sfm"] = {"registered_share": sfm.registered_share, "models": sfm.n_models,
                          "points3d": sfm.n_points3d, "reproj_px": sfm.mean_reproj_error_px,
                          "wall_s": sfm.wall_s, **sfm.options, **sfm_self_consistency(sfm.T_world_cam)}
        resets = np.array([f["reset"] for f in run["frames"]], bool)
        summary["pipeline_vs_sfm"] = compare_with_sfm(T, sfm.T_world_cam, resets)

    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    s = summary
    print(f"[real] {s['frames']} frames, posed {s['frames_posed']} (first at "
          f"{s['first_pose_frame']}, map at {s['map_init_frame']}), resets {s['resets']} ({s['resets_after_init']} after init), "
          f"tracked through: {s['tracked_through']}, dynamic keypoints "
          f"{100 * s['dynamic_keypoint_share_mean']:.1f} % (mean), {s['fps']:.1f} FPS")
    if "pipeline_vs_sfm" in s:
        c, f = s["pipeline_vs_sfm"], s["sfm"]
        print(f"[real] COLMAP registered {100 * f['registered_share']:.0f} % ({f['models']} "
              f"model(s)); pipeline vs COLMAP on {c['pairs']} consecutive pairs: rotation "
              f"{c.get('rot_median_deg', float('nan')):.3f} deg, translation direction "
              f"{c.get('dir_median_deg', float('nan')):.2f} deg (medians; within one map, "
              f"{c.get('pairs_within_map', 0)} pairs: "
              f"{c.get('rot_median_deg_within_map', float('nan')):.3f} / "
              f"{c.get('dir_median_deg_within_map', float('nan')):.2f} deg)")
    print(f"[real] outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
