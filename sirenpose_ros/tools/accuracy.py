"""Accuracy benchmark: the method and its ablations on the synthetic presets, plus an offline
structure-from-motion reference on the same frames, as one table.

    sirenpose_accuracy --out out/accuracy --frames 90 --size 320x240
        [--rows full,static_world,no_gnn,no_physics,no_joint,no_field,learned_frontend,sfm,sfm_masked]
        [--presets easy,fast,...] [--seed 0] [--cache-dir DIR] [--reuse]
        [--set NAME:=VALUE ...] [--markdown docs/accuracy.md]

Every row of the table is a name -> parameter overrides entry of ``ROWS`` (a new ablation is
one line there). A row whose parameters the pipeline does not have (yet) is listed as
"not available" with the missing names instead of being run with a silently different config.
``sfm`` is not a pipeline config: COLMAP (pycolmap, CPU) reconstructs the same frames offline
with the same intrinsics (sirenpose_ros/eval/sfm_reference.py).

Per (preset, row): ATE RMSE after Sim(3) Umeyama alignment (and in % of the ground-truth path
length, or of the median scene depth for ``still``, whose path is millimetres), RPE over pairs of
consecutive frames that both have a pose (translation after the Sim(3) scale, rotation in
degrees), tracked share (frames with a pose / frames), depth Abs Rel and delta<1.25 (median
scaled per frame), dynamic-mask IoU and dynamic-keypoint F1 (the same scorer as
``sirenpose_offline``), FPS = frames / wall seconds of the ``Pipeline.process`` calls only
(rendering and image conversion excluded), and CPU ms per frame of this process.

Renders are cached (``--cache-dir``) as .npz; per-(preset, row) results are written to
OUT/results/PRESET__ROW.json, and ``--reuse`` takes an existing one whose settings match
instead of running it again (the SfM reference does not change with the method and takes
minutes per sequence).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sirenpose_ros.core.params import parse_assignments

DEFAULT_CACHE = Path("/work/notes/acc_cache")
STATIC_PRESET = "still"          # its ATE target is relative to the scene depth, not the path
DYNAMIC_SHARE_FOR_ABLATION = 0.20   # "sequences with 20 %+ moving pixels"
STILL_EPS = 1e-9                    # relative spread below which estimated positions coincide

# ---------------------------------------------------------------------------------------------
# Rows: name -> configuration
# ---------------------------------------------------------------------------------------------

# The product's defaults are the method: KLT frontend (the learned XFeat frontend is an option
# that wants a GPU), motion GNN scorer, SIREN field, SirenPose joint refinement. Each ablation
# row changes one thing.
XFEAT = {"pipeline_frontend": "xfeat"}
# The SirenPose physics-inspired terms: velocity and acceleration consistency of dynamic
# keypoints, and of the camera.
PHYSICS_OFF = {"loss_velocity_weight": 0.0, "loss_acceleration_weight": 0.0,
               "loss_camera_motion_weight": 0.0}


@dataclass(frozen=True)
class Row:
    label: str                                   # column text in the table
    overrides: dict = field(default_factory=dict)   # required: row unavailable without them
    optional: dict = field(default_factory=dict)    # applied only where the parameter exists
    kind: str = "pipeline"                       # 'pipeline' or 'sfm'
    dynamic_output: bool = True                  # False: the row claims no moving parts, so
                                                 # mask IoU / keypoint F1 are not scored
    sfm_mask_moving: bool = False                # sfm: no features on the ground-truth
                                                 # moving objects (an oracle, not a method)
    note: str = ""


ROWS: dict[str, Row] = {
    "full": Row("full method (defaults)",
                note="KLT frontend, motion GNN scorer, SIREN field, SirenPose joint refinement"),
    "static_world": Row("static world (no dynamic handling)", {"window_static_world": True},
                        dynamic_output=False,
                        note="estimator ignores p_dynamic everywhere (no weighting, no "
                             "exclusion, no culling); dynamic labels not scored"),
    "no_gnn": Row("no motion GNN (geometric scorer)", {"graph_scorer": "geometric"},
                  note="dynamic probability from static-model residuals only"),
    "no_physics": Row("no physics terms", PHYSICS_OFF,
                      note="velocity / acceleration consistency (keypoints and camera) off"),
    "no_joint": Row("no joint refinement", {"joint_enabled": False},
                    note="SirenPose joint window refinement off (BA only)"),
    "no_field": Row("no SIREN field (sparse only)", {"field_enabled": False},
                    note="no dense depth: depth columns and mask IoU empty"),
    "learned_frontend": Row("learned frontend (XFeat + LighterGlue)", XFEAT,
                            note="XFeat + LighterGlue on the CPU, motion GNN (trained on KLT "
                                 "and XFeat tracks)"),
    "sfm": Row("offline SfM reference (COLMAP)", kind="sfm", dynamic_output=False,
               note="pycolmap SIFT, sequential matching, incremental mapping, fixed K"),
    "sfm_masked": Row("offline SfM, moving objects masked (oracle)", kind="sfm",
                      dynamic_output=False, sfm_mask_moving=True,
                      note="as sfm, no features where the rendered motion mask is set: shows "
                           "how much of the SfM error the moving objects cause"),
}
DEFAULT_ROWS = tuple(ROWS)
# Rows the product targets are checked on, each with the static-world row it must halve the ATE of.
TARGET_ROWS = {"full": "static_world"}


def row_config(row: Row, extra: dict | None = None) -> tuple[dict | None, list[str]]:
    """(overrides to run the row with, missing parameter names). Overrides are None when the
    row is not available (a required parameter does not exist). ``extra`` (``--set``) is
    applied on top of every pipeline row."""
    from sirenpose_ros.core.config import pipeline_params
    if row.kind != "pipeline":
        return {}, []
    names = {s.name for s in pipeline_params()}
    missing = sorted(k for k in row.overrides if k not in names)
    if missing:
        return None, missing
    values = {k: v for k, v in row.optional.items() if k in names}
    values.update(row.overrides)
    values.update(extra or {})
    return values, []


def cpu_devices(values: dict) -> dict:
    """``values`` plus '<module>_device': 'cpu' for every device parameter not set explicitly:
    the table's FPS column is CPU FPS, also on a machine that has a GPU."""
    from sirenpose_ros.core.config import pipeline_params
    out = dict(values)
    for s in pipeline_params():
        if s.name.endswith("_device") and s.name not in out:
            out[s.name] = "cpu"
    return out


# ---------------------------------------------------------------------------------------------
# Sequences (rendered once, cached)
# ---------------------------------------------------------------------------------------------

def cache_path(cache_dir: Path, preset: str, seed: int, n: int, w: int, h: int) -> Path:
    return Path(cache_dir) / f"{preset}_s{seed}_{n}f_{w}x{h}.npz"


def load_sequence_cached(preset: str, seed: int, n: int, w: int, h: int,
                         cache_dir: Path | None) -> tuple[Any, Path | None]:
    """(Sequence, its cache file or None). The cache file holds depth/mask/stamps_ns under the
    names gt.npz uses, so it doubles as the dense ground truth of ``sirenpose_offline``."""
    from sirenpose_ros.synth.sequence import Sequence, render_sequence
    path = cache_path(cache_dir, preset, seed, n, w, h) if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return Sequence(z["K"], w, h, float(meta["fps"]), z["stamps_ns"], z["T_world_cam"],
                            z["rgb"], z["depth"], z["mask"], meta), path
    seq = render_sequence(preset, seed=seed, n_frames=n, width=w, height=h)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, K=seq.K, stamps_ns=seq.stamps_ns, T_world_cam=seq.T_world_cam, rgb=seq.rgb,
                 depth=seq.depth, mask=seq.mask, meta=json.dumps(seq.meta))
        tmp.replace(path)               # never leave a half-written cache behind
    return seq, path


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------

def rpe_consecutive(T_est: np.ndarray, T_gt: np.ndarray, scale: float) -> dict:
    """RPE over pairs (i, i+1) where both estimated poses exist (finite): never across a gap.
    Translation in ground-truth units after multiplying the estimate by ``scale``."""
    from sirenpose_ros.eval.metrics import rotation_angle
    ok = np.isfinite(T_est).all(axis=(1, 2))
    i = np.flatnonzero(ok[:-1] & ok[1:])
    if i.size == 0:
        return {"rpe_t": float("nan"), "rpe_r_deg": float("nan"), "rpe_pairs": 0}
    P = T_est.copy()
    P[:, :3, 3] *= scale
    rel_e = np.linalg.inv(P[i]) @ P[i + 1]
    rel_g = np.linalg.inv(T_gt[i]) @ T_gt[i + 1]
    E = np.linalg.inv(rel_g) @ rel_e
    et = np.linalg.norm(E[:, :3, 3], axis=1)
    er = np.degrees(rotation_angle(E[:, :3, :3]))
    return {"rpe_t": float(np.sqrt(np.mean(et ** 2))),
            "rpe_r_deg": float(np.sqrt(np.mean(er ** 2))), "rpe_pairs": int(i.size)}


def trajectory_scores(T_est: np.ndarray, T_gt: np.ndarray, reference_length: float) -> dict:
    """ATE (Sim(3)), RPE and tracked share of an estimate with NaN poses where it has none.
    ``reference_length``: what the ATE percentage is relative to (path length or depth)."""
    from sirenpose_ros.eval.metrics import ate
    ok = np.isfinite(T_est).all(axis=(1, 2))
    from sirenpose_ros.eval.metrics import longest_lost_run
    lost = np.flatnonzero(~ok)
    out: dict[str, Any] = {"tracked_share": float(ok.mean()), "n_posed": int(ok.sum()),
                           # Separates needing parallax to start (losses only at the start)
                           # from losing track later.
                           "longest_lost_run": longest_lost_run(ok),
                           "last_lost_frame": int(lost[-1]) if lost.size else None,
                           "ate": float("nan"), "ate_pct": float("nan"), "sim3_scale": float("nan"),
                           "rpe_t": float("nan"), "rpe_r_deg": float("nan"), "rpe_pairs": 0}
    if ok.sum() < 3:
        out["trajectory_error"] = f"{int(ok.sum())} poses; ATE needs 3"
        return out
    p = T_est[ok][:, :3, 3]
    if np.ptp(p, axis=0).max() <= STILL_EPS * max(np.abs(p).max(), 1.0):
        # The estimate says the camera stands still (a pipeline with no baseline keeps its
        # position): Sim(3) is undefined, and no scale or rotation can move one point, so the
        # best alignment puts it on the ground-truth centroid: ATE = spread of the true path.
        g = T_gt[ok][:, :3, 3]
        rmse = float(np.sqrt(np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1))))
        out.update(ate=rmse, ate_pct=100.0 * rmse / max(reference_length, 1e-12), sim3_scale=1.0,
                   ate_align="position only (estimate does not move)")
        out.update(rpe_consecutive(T_est, T_gt, 1.0))
        return out
    try:
        a = ate(T_est[ok], T_gt[ok], align="sim3")
    except ValueError as exc:         # e.g. all posed positions on one line
        out["trajectory_error"] = str(exc)
        return out
    out.update(ate=a["rmse"], ate_pct=100.0 * a["rmse"] / max(reference_length, 1e-12),
               sim3_scale=a["scale"], ate_align="sim3")
    out.update(rpe_consecutive(T_est, T_gt, a["scale"]))
    return out


def reference_length(preset: str, meta: dict) -> tuple[float, str]:
    if preset == STATIC_PRESET:
        return float(meta["median_depth_m"]), "median depth"
    return float(meta["trajectory_length_m"]), "path length"


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------

def describe_pipeline(pipe) -> dict:
    """What actually ran: class names of the frontend and the motion scorer."""
    graph = getattr(pipe, "graph", None)
    scorer = getattr(graph, "scorer", None)
    return {"frontend": type(getattr(pipe, "frontend", None)).__name__,
            "motion_scorer": type(scorer).__name__ if scorer is not None else "none",
            "field": type(pipe.field).__name__ if getattr(pipe, "field", None) is not None
            else "none"}


def run_pipeline(seq, values: dict, gt_npz: Path | None) -> dict:
    """Feed every frame of ``seq`` to a fresh Pipeline(values); -> poses (NaN where none) and
    scores. Frames are converted before the clock starts: FPS is the pipeline's alone."""
    import cv2
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.core.config import make_config
    from sirenpose_ros.core.pipeline import Pipeline
    from sirenpose_ros.core.types import Frame, TrackingState

    cfg = make_config(values)
    K = seq.K
    cam = CameraModel.pinhole(seq.width, seq.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    frames = [Frame(int(seq.stamps_ns[i]), cv2.cvtColor(seq.rgb[i], cv2.COLOR_RGB2GRAY),
                    seq.rgb[i], cam) for i in range(len(seq))]
    dense = None
    if gt_npz is not None:
        from sirenpose_ros.tools.offline import DenseGroundTruth, DenseScores
        dense = DenseScores(DenseGroundTruth(gt_npz, max_dt_ns=1_000_000), cfg)
    pipe = Pipeline(cfg)
    T = np.full((len(frames), 4, 4), np.nan)
    resets, wall, cpu = 0, 0.0, 0.0
    for i, frame in enumerate(frames):
        c0, t0 = time.process_time(), time.perf_counter()
        res = pipe.process(frame)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        resets += int(bool(res.reset))
        if res.state is TrackingState.TRACKING and res.T_world_cam is not None:
            T[i] = res.T_world_cam
        if dense is not None:
            dense.add(res)              # scoring is outside the timed span
    n = len(frames)
    out = {"T_est": T, "resets": resets, "wall_s": wall, "fps": n / wall if wall > 0 else None,
           "cpu_ms_per_frame": 1e3 * cpu / n, "ran": describe_pipeline(pipe)}
    if dense is not None:
        out["dense"] = dense.summary()
    return out


def run_sfm_row(seq, threads: int, mask_moving: bool = False) -> dict:
    from sirenpose_ros.eval.sfm_reference import run_sfm_on_frames
    r = run_sfm_on_frames(seq.rgb, seq.K, exclude=seq.mask if mask_moving else None,
                          matching="sequential", num_threads=threads)
    n = len(seq)
    return {"T_est": r.T_world_cam, "resets": max(r.n_models - 1, 0), "wall_s": r.wall_s,
            "fps": n / r.wall_s if r.wall_s > 0 else None, "cpu_ms_per_frame": None,
            "ran": {"sfm_models": r.n_models, "sfm_points3d": r.n_points3d,
                    "sfm_reproj_px": r.mean_reproj_error_px, **r.options}}


def evaluate_one(preset: str, row_name: str, seq, gt_npz: Path | None, values: dict | None,
                 sfm_threads: int = 2) -> dict:
    """Run one (preset, row) and score it -> a JSON-able result dict."""
    row = ROWS[row_name]
    ref, ref_name = reference_length(preset, seq.meta)
    base = {"preset": preset, "row": row_name, "label": row.label, "frames": len(seq),
            "size": f"{seq.width}x{seq.height}", "seed": seq.meta.get("seed"),
            "moving_share": seq.meta.get("moving_pixel_share_mean"),
            "path_length_m": seq.meta.get("trajectory_length_m"),
            "median_depth_m": seq.meta.get("median_depth_m"), "ate_pct_of": ref_name,
            "overrides": values}
    if row.kind == "sfm":
        run = run_sfm_row(seq, sfm_threads, row.sfm_mask_moving)
    else:
        run = run_pipeline(seq, values or {}, gt_npz)
    scores = trajectory_scores(run.pop("T_est"), seq.T_world_cam, ref)
    dense = run.pop("dense", {})
    out = {**base, **scores, **run}
    out["depth_abs_rel"] = dense.get("depth_abs_rel", float("nan"))
    out["depth_delta1"] = dense.get("depth_delta1", float("nan"))
    out["depth_coverage"] = dense.get("depth_coverage", float("nan"))
    for k in ("depth_error_share_moving", "depth_abs_rel_moving", "depth_abs_rel_static",
              "depth_moving_ratio"):        # where the depth error is (JSON only)
        out[k] = dense.get(k, float("nan"))
    if row.dynamic_output:
        out["dyn_mask_iou"] = dense.get("dyn_mask_iou", float("nan"))
        out["dyn_kp_f1"] = dense.get("dyn_kp_f1", float("nan"))
        out["dyn_kp_precision"] = dense.get("dyn_kp_precision", float("nan"))
        out["dyn_kp_recall"] = dense.get("dyn_kp_recall", float("nan"))
    else:
        out.update(dyn_mask_iou=float("nan"), dyn_kp_f1=float("nan"),
                   dyn_kp_precision=float("nan"), dyn_kp_recall=float("nan"))
    return out


def json_safe(v: Any) -> Any:
    """NaN/inf -> null, NumPy scalars -> Python numbers (strict JSON)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def result_key(preset: str, row: str, n: int, size: str, seed: int, values: dict | None) -> dict:
    """What a stored result must match to be reused."""
    return json_safe({"preset": preset, "row": row, "frames": n, "size": size, "seed": seed,
                      "overrides": values})


# ---------------------------------------------------------------------------------------------
# Targets and the Markdown report
# ---------------------------------------------------------------------------------------------

def _num(v) -> float:
    return float("nan") if v is None else float(v)


def check_targets(results: list[dict], row_name: str = "full",
                  static_row: str = "static_world") -> list[dict]:
    """The product targets, checked on one row's results (and that row vs ``static_row``)."""
    by = {(r["preset"], r["row"]): r for r in results}
    out = []

    def add(preset, target, value, ok, detail=""):
        out.append({"preset": preset, "target": target, "value": value,
                    "met": bool(ok) if ok is not None else None, "detail": detail})

    for (preset, row), r in sorted(by.items()):
        if row != row_name or r.get("status") == "not available":
            continue
        pct = _num(r.get("ate_pct"))
        add(preset, f"ATE <= 1 % of {r['ate_pct_of']}", f"{pct:.2f} %" if np.isfinite(pct)
            else "no trajectory", np.isfinite(pct) and pct <= 1.0)
        lost = 1.0 - _num(r.get("tracked_share"))
        # Rounded: 1 - 0.95 is 0.0500...04 in floating point, and exactly 5 % passes.
        add(preset, "frames lost <= 5 %", f"{100 * lost:.1f} %", round(lost, 9) <= 0.05)
        f1 = _num(r.get("dyn_kp_f1"))
        add(preset, "dynamic-keypoint F1 >= 0.85", f"{f1:.3f}" if np.isfinite(f1) else "n/a",
            (f1 >= 0.85) if np.isfinite(f1) else None)
        ar, d1 = _num(r.get("depth_abs_rel")), _num(r.get("depth_delta1"))
        add(preset, "depth Abs Rel <= 0.15 and delta<1.25 >= 0.85",
            f"{ar:.3f} / {d1:.3f}" if np.isfinite(ar) else "no depth",
            (ar <= 0.15 and d1 >= 0.85) if np.isfinite(ar) else False)
        st = by.get((preset, static_row))
        share = _num(r.get("moving_share"))
        if st is not None and share >= DYNAMIC_SHARE_FOR_ABLATION:
            a, b = _num(r.get("ate")), _num(st.get("ate"))
            ok = np.isfinite(a) and np.isfinite(b) and a <= 0.5 * b
            add(preset, f"ATE <= 1/2 ATE of {static_row} (20 %+ moving pixels)",
                f"{_f(a, '{:.4f}')} vs {_f(b, '{:.4f}')} m", ok,
                f"moving share {100 * share:.0f} %")
    return out


def _f(v, fmt: str) -> str:
    v = _num(v)
    return fmt.format(v) if np.isfinite(v) else "–"


def results_table(results: list[dict]) -> list[str]:
    """One Markdown table per preset, one line per row."""
    lines = []
    presets = list(dict.fromkeys(r["preset"] for r in results))
    for preset in presets:
        rs = [r for r in results if r["preset"] == preset]
        r0 = rs[0]
        lines += [f"### {preset}", "",
                  f"moving pixels {100 * _num(r0.get('moving_share')):.1f} % (mean), path "
                  f"{_num(r0.get('path_length_m')):.3f} m, median depth "
                  f"{_num(r0.get('median_depth_m')):.2f} m; ATE % is of the "
                  f"{r0['ate_pct_of']}.", "",
                  "| row | ATE [m] | ATE % | RPE-t [m] | RPE-r [deg] | tracked | resets | "
                  "Abs Rel | δ<1.25 | mask IoU | kp F1 | FPS (CPU) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            if r.get("status") == "not available":
                lines.append(f"| {r['label']} | not available yet: needs parameter(s) "
                             f"{', '.join(r['missing'])} |" + " |" * 10)
                continue
            mark = " †" if str(r.get("ate_align", "")).startswith("position only") else ""
            lines.append(
                f"| {r['label']} | {_f(r.get('ate'), '{:.4f}')}{mark} | {_f(r.get('ate_pct'), '{:.2f}')} "
                f"| {_f(r.get('rpe_t'), '{:.4f}')} | {_f(r.get('rpe_r_deg'), '{:.3f}')} "
                f"| {100 * _num(r.get('tracked_share')):.0f} % | {r.get('resets', '–')} "
                f"| {_f(r.get('depth_abs_rel'), '{:.3f}')} | {_f(r.get('depth_delta1'), '{:.3f}')} "
                f"| {_f(r.get('dyn_mask_iou'), '{:.3f}')} | {_f(r.get('dyn_kp_f1'), '{:.3f}')} "
                f"| {_f(r.get('fps'), '{:.1f}')} |")
        if any(str(r.get("ate_align", "")).startswith("position only") for r in rs):
            lines += ["", "† the estimate keeps one position (it reports rotation only): "
                          "no Sim(3) exists, the ATE is the spread of the true positions "
                          "around their centroid."]
        if any(ROWS[r["row"]].kind == "sfm" for r in rs if r["row"] in ROWS):
            lines += ["", "SfM rows: 'tracked' = registered images, 'resets' = extra models "
                          "COLMAP split the sequence into (only the largest is scored), FPS = "
                          "frames / wall seconds of extraction + matching + mapping."]
        lines.append("")
    return lines


def rows_table(row_names: list[str], results: list[dict]) -> list[str]:
    """Which configuration each row is, and what actually ran."""
    lines = ["| row | parameter overrides | ran | note |", "|---|---|---|---|"]
    for name in row_names:
        row = ROWS[name]
        ran = next((r for r in results if r["row"] == name and r.get("status") != "not available"),
                   None)
        if row.kind == "sfm":
            over = "pycolmap (not the pipeline)"
            what = (f"pycolmap {ran['ran'].get('pycolmap')}" if ran else "–")
        else:
            values, missing = row_config(row)
            over = ("missing: " + ", ".join(missing)) if values is None else (
                ", ".join(f"`{k}={v}`" for k, v in values.items()) or "(defaults)")
            what = (f"frontend {ran['ran']['frontend']}, motion scorer "
                    f"{ran['ran']['motion_scorer']}, field {ran['ran']['field']}" if ran
                    else "not run")
        lines.append(f"| {name} | {over} | {what} | {row.note} |")
    return lines


def targets_table(targets: list[dict]) -> list[str]:
    lines = ["| preset | target | value | met |", "|---|---|---|---|"]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        detail = f" ({t['detail']})" if t["detail"] else ""
        lines.append(f"| {t['preset']} | {t['target']} | {t['value']}{detail} | {met} |")
    return lines


BEGIN_MARK = "<!-- sirenpose_accuracy:begin (generated; edit outside these marks) -->"
END_MARK = "<!-- sirenpose_accuracy:end -->"


def write_markdown_section(path: Path, md: str) -> None:
    """Write ``md`` into ``path`` between BEGIN_MARK and END_MARK: a file that has the marks
    keeps everything outside them (hand-written sections such as the real-data checks); a file
    without them is replaced."""
    block = f"{BEGIN_MARK}\n{md.rstrip()}\n{END_MARK}\n"
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    b, e = text.find(BEGIN_MARK), text.find(END_MARK)
    if b >= 0 and e > b:
        text = text[:b] + block + text[e + len(END_MARK):].lstrip("\n")
    else:
        text = block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def git_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


CODE_PATHS = ("sirenpose_ros/core", "sirenpose_ros/synth", "sirenpose_ros/eval", "models")


def code_state(repo: Path) -> str:
    """'<commit>' or '<commit>+dirty' (uncommitted changes under the code the numbers depend
    on), plus the motion GNN weights digest: recorded in every result when it is computed, so
    a report built from reused results says which code produced them."""
    try:
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", *CODE_PATHS],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        dirty = ""
    return f"{git_commit(repo)}{'+dirty' if dirty else ''}, GNN weights {weights_digest()}"


def weights_digest() -> str:
    """Short sha256 of the shipped motion GNN weights (retrained often: results depend on it)."""
    import hashlib
    try:
        from sirenpose_ros.core.motion_gnn import default_weights_path
        return hashlib.sha256(default_weights_path().read_bytes()).hexdigest()[:12]
    except (ImportError, OSError):
        return "n/a"


def markdown_report(results: list[dict], row_names: list[str], command: str, commit: str,
                    date: str, machine: str) -> str:
    """The report; ``commit``: the code state of this invocation (results computed now)."""
    states = sorted({r.get("code", "not recorded") for r in results
                     if r.get("status") != "not available"})
    lines = ["# Accuracy benchmark (synthetic dynamic sequences)", "",
             "Generated by `sirenpose_accuracy` (sirenpose_ros/tools/accuracy.py); do not edit "
             "the tables by hand, re-run the command.", "",
             f"- command: `{command}`",
             f"- code of the results: {'; '.join(f'`{c}`' for c in states) or '–'} "
             f"(commit, '+dirty' = uncommitted changes under {', '.join(CODE_PATHS)}; "
             f"reused results keep the code they were computed with); this run: `{commit}`",
             f"- date: {date}", f"- machine: {machine}", "",
             "Metrics: ATE = RMSE of positions after Sim(3) Umeyama alignment (metres of the "
             "synthetic world); RPE over consecutive frames that both have a pose, translation "
             "after the Sim(3) scale; tracked = frames with a pose / frames (initialisation "
             "frames count as lost); depth Abs Rel and δ<1.25 median-scaled per frame on the "
             "field's reduced grid; mask IoU = dense dynamic mask (keypoint probabilities "
             "spread as the pipeline does for its clouds, > 0.5) vs the rendered motion mask, "
             "mean over frames; kp F1 = keypoints with p_dynamic > 0.5 vs the mask at the "
             "keypoint; FPS = frames / wall seconds of `Pipeline.process` only, on the CPU. "
             "'–' = not defined for the row (no pose, no depth, or no dynamic output).", "",
             "## Rows", ""]
    lines += rows_table(row_names, results)
    lines += ["", "## Results", ""]
    lines += results_table(results)
    for row_name, static_row in TARGET_ROWS.items():
        targets = check_targets(results, row_name, static_row)
        if not targets:
            continue
        lines += [f"## Targets: {ROWS[row_name].label}", ""]
        lines += targets_table(targets)
        met = sum(t["met"] is True for t in targets)
        checked = sum(t["met"] is not None for t in targets)
        lines += ["", f"{met} of {checked} checked targets met.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size too small: {text}")
    return w, h


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from sirenpose_ros.synth.presets import PRESETS
    ap = argparse.ArgumentParser(prog="sirenpose_accuracy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--size", type=parse_size, default=(320, 240), help="WxH (default 320x240)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--presets", default=",".join(PRESETS),
                    help=f"comma-separated (default all: {','.join(PRESETS)})")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                    help=f"comma-separated (default all: {','.join(DEFAULT_ROWS)})")
    ap.add_argument("--set", action="append", default=[], metavar="NAME:=VALUE",
                    help="pipeline parameter applied to every pipeline row (repeatable)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                    help=f"rendered sequences (default {DEFAULT_CACHE}); 'none' disables")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse OUT/results/*.json whose settings match instead of re-running")
    ap.add_argument("--sfm-threads", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a busy 2-core CPU two threads "
                         "made the field 10-50x slower than one); 0 keeps torch's default")
    ap.add_argument("--markdown", type=Path, default=None, help="write the report here too")
    args = ap.parse_args(argv)
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [p for p in args.presets if p not in PRESETS]
    if bad:
        ap.error(f"unknown preset(s) {bad}; choose from {', '.join(PRESETS)}")
    bad = [r for r in args.rows if r not in ROWS]
    if bad:
        ap.error(f"unknown row(s) {bad}; choose from {', '.join(ROWS)}")
    if args.frames < 3:
        ap.error("--frames must be >= 3")
    if str(args.cache_dir).lower() == "none":
        args.cache_dir = None
    bad = [s for s in args.set if ":=" not in s]
    if bad:
        ap.error(f"--set expects NAME:=VALUE, got {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from sirenpose_ros.core.params import ParamError
    extra = parse_assignments(args.set, "--set")
    import torch
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    w, h = args.size
    size = f"{w}x{h}"
    res_dir = args.out / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    code = code_state(repo)           # at the start: the code this process imports
    results = []
    for preset in args.presets:
        seq, gt_npz = load_sequence_cached(preset, args.seed, args.frames, w, h, args.cache_dir)
        if gt_npz is None:                   # no cache: the dense scorer still needs a file
            gt_npz = args.out / f"{preset}_gt.npz"
            np.savez(gt_npz, depth=seq.depth, mask=seq.mask, stamps_ns=seq.stamps_ns)
        for row_name in args.rows:
            row = ROWS[row_name]
            values, missing = row_config(row, extra)
            if values is None:
                results.append({"preset": preset, "row": row_name, "label": row.label,
                                "status": "not available", "missing": missing})
                print(f"[accuracy] {preset:14s} {row_name:20s} not available (needs "
                      f"{', '.join(missing)})", flush=True)
                continue
            if row.kind == "pipeline":
                values = cpu_devices(values)
            key = result_key(preset, row_name, args.frames, size, args.seed,
                             values if row.kind == "pipeline" else None)
            path = res_dir / f"{preset}__{row_name}.json"
            if args.reuse and path.exists():
                stored = json.loads(path.read_text())
                if stored.get("key") == key:
                    results.append(stored)
                    print(f"[accuracy] {preset:14s} {row_name:20s} reused {path}", flush=True)
                    continue
            try:
                r = evaluate_one(preset, row_name, seq, gt_npz,
                                 values if row.kind == "pipeline" else None, args.sfm_threads)
            except (ParamError, ImportError) as exc:
                print(f"error: {preset}/{row_name}: {exc}", file=sys.stderr)
                return 1
            r["key"] = key
            r["code"] = code
            r = json_safe(r)
            path.write_text(json.dumps(r, indent=1) + "\n")
            results.append(r)
            print(f"[accuracy] {preset:14s} {row_name:20s} ATE {_f(r.get('ate'), '{:.4f}')} m "
                  f"({_f(r.get('ate_pct'), '{:.2f}')} %), tracked "
                  f"{100 * _num(r.get('tracked_share')):.0f} %, AbsRel "
                  f"{_f(r.get('depth_abs_rel'), '{:.3f}')}, IoU {_f(r.get('dyn_mask_iou'), '{:.3f}')}, "
                  f"F1 {_f(r.get('dyn_kp_f1'), '{:.3f}')}, FPS {_f(r.get('fps'), '{:.1f}')}",
                  flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    machine = (f"{platform.processor() or platform.machine()}, {_cpu_count()} CPU cores, "
               f"torch threads {torch.get_num_threads()}; shared with other jobs while it ran "
               f"(load average at the end {_loadavg()}), so FPS is indicative")
    command = "sirenpose_accuracy " + " ".join(argv)
    md = markdown_report(results, args.rows, command, code, _dt.date.today().isoformat(), machine)
    (args.out / "accuracy.md").write_text(md)
    if args.markdown is not None:
        write_markdown_section(args.markdown, md)
    print(f"[accuracy] report in {args.out / 'accuracy.md'}"
          + (f" and {args.markdown}" if args.markdown else ""))
    return 0


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _loadavg() -> str:
    try:
        import os
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
