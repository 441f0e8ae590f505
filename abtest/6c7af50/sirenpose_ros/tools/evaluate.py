"""Evaluate an estimated trajectory against ground truth (both TUM files).

    python -m sirenpose_ros.tools.evaluate --est est.tum --gt groundtruth.tum
        [--align sim3|se3|none] [--delta 1] [--max-dt-ms 20] [--n-frames N]
        [--json out.json] [--plot out.png]

Poses are associated by nearest timestamp (mutual nearest, within --max-dt-ms), then ATE
(after Umeyama alignment; Sim(3) by default because monocular scale is arbitrary) and RPE over
--delta matched poses are computed (frames the estimate lost are skipped, so a pair
may span a gap: RPE then measures drift across the gap). --n-frames (frames fed to the
pipeline) adds the tracked share: estimated poses / frames.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sirenpose_ros.eval.metrics import (apply_alignment, associate, ate, fit_alignment, rpe,
                                        tracked_share, trajectory_length)
from sirenpose_ros.io.tum import read_tum


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sirenpose-evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--est", required=True, type=Path, help="estimated trajectory (TUM)")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth trajectory (TUM)")
    p.add_argument("--align", choices=("sim3", "se3", "none"), default="sim3",
                   help="alignment before ATE (default sim3: monocular scale is arbitrary)")
    p.add_argument("--delta", type=int, default=1, help="RPE frame gap (default 1)")
    p.add_argument("--max-dt-ms", type=float, default=20.0,
                   help="largest stamp difference for association, ms (default 20)")
    p.add_argument("--n-frames", type=int, default=None,
                   help="number of input frames, for the tracked share")
    p.add_argument("--json", type=Path, default=None, help="write metrics as JSON here")
    p.add_argument("--plot", type=Path, default=None, help="write a summary PNG here")
    return p


def evaluate(est_path: Path, gt_path: Path, align: str = "sim3", delta: int = 1,
             max_dt_ms: float = 20.0, n_frames: int | None = None):
    """Compute the metrics dict and the aligned estimate / matched ground truth poses."""
    est_stamps, est_T = read_tum(est_path)
    gt_stamps, gt_T = read_tum(gt_path)
    ia, ig = associate(est_stamps, gt_stamps, int(round(max_dt_ms * 1e6)))
    if len(ia) < 3:
        raise ValueError(f"only {len(ia)} estimated poses match a ground-truth stamp within "
                         f"{max_dt_ms} ms; need at least 3")
    est_m, gt_m = est_T[ia], gt_T[ig]
    result = {
        "est": str(est_path), "gt": str(gt_path), "align": align,
        "n_est": int(len(est_T)), "n_gt": int(len(gt_T)), "n_matched": int(len(ia)),
        "ate": ate(est_m, gt_m, align=align),
        "rpe": rpe(est_m, gt_m, delta=delta, scale=None if align == "sim3" else 1.0),
        "gt_length": trajectory_length(gt_m),
    }
    result["rpe"]["delta"] = delta
    if n_frames is not None:
        result["tracked_share"] = tracked_share(len(est_T), n_frames)
    s, R, t = fit_alignment(est_m, gt_m, align)
    return result, apply_alignment(est_m, s, R, t), gt_m


def _table(m: dict) -> str:
    a, r = m["ate"], m["rpe"]
    rows = [
        ("matched poses", f"{m['n_matched']} (est {m['n_est']}, gt {m['n_gt']})"),
        (f"ATE rmse ({m['align']})", f"{a['rmse']:.4f}"),
        ("ATE mean / median / max", f"{a['mean']:.4f} / {a['median']:.4f} / {a['max']:.4f}"),
        ("alignment scale", f"{a['scale']:.4f}"),
        (f"RPE trans rmse (d={r['delta']})", f"{r['trans_rmse']:.4f}"),
        (f"RPE rot rmse (d={r['delta']})", f"{r['rot_rmse_deg']:.4f} deg"),
        ("gt path length", f"{m['gt_length']:.3f}"),
    ]
    if "tracked_share" in m:
        rows.append(("tracked share", f"{100 * m['tracked_share']:.1f} %"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> dict:
    """Parse args, evaluate, print a table, optionally write JSON/PNG; return the metrics."""
    args = _parser().parse_args(argv)
    metrics, est_aligned, gt_m = evaluate(args.est, args.gt, args.align, args.delta,
                                          args.max_dt_ms, args.n_frames)
    print(_table(metrics))
    if args.json is not None:
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    if args.plot is not None:
        from sirenpose_ros.eval.plot import plot_summary   # matplotlib only when plotting
        shown = {"ATE rmse": metrics["ate"]["rmse"], "scale": metrics["ate"]["scale"],
                 "RPE trans": metrics["rpe"]["trans_rmse"],
                 "RPE rot deg": metrics["rpe"]["rot_rmse_deg"], "n": metrics["n_matched"]}
        plot_summary(args.plot, est_aligned, gt_m, title=args.est.name, metrics=shown)
    return metrics


def cli() -> int:
    """Console-script entry point (exit status 0 / 1 / 2 instead of the metrics dict)."""
    try:
        main()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
