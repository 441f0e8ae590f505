"""One-image summary of a run: trajectory from above, depth or cloud, and the metrics.

Uses matplotlib's Agg canvas directly (no pyplot, so no global backend state and no display).
"""
from __future__ import annotations

from os import PathLike

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sirenpose_ros.core.types import Cloud

_MAX_SCATTER = 40_000          # points drawn in the cloud panel; more only costs time


def _format_metrics(metrics: dict | None) -> str:
    if not metrics:
        return ""
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
            lines.append(f"{key}: {inner}")
        else:
            lines.append(f"{key}: {_fmt(value)}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# Top views: which two world axes span the ground plane, for the frame's "up" convention.
# Optical world (up = -y): x to the right, z forward. z-up worlds (ROS, the synthetic scenes): x, y.
TOP_VIEWS = {"-y": ((0, "x [right]"), (2, "z [forward]")), "+z": ((0, "x"), (1, "y"))}


def _trajectory_panel(ax, est_T: np.ndarray, gt_T: np.ndarray | None, up: str) -> None:
    (i, xl), (j, yl) = TOP_VIEWS[up]
    if gt_T is not None and len(gt_T):
        g = np.asarray(gt_T)[:, :3, 3]
        ax.plot(g[:, i], g[:, j], "-", color="0.35", lw=1.5, label="ground truth")
        ax.plot(g[0, i], g[0, j], "o", color="0.35", ms=7, mfc="none")
    if est_T is not None and len(est_T):
        e = np.asarray(est_T)[:, :3, 3]
        ax.plot(e[:, i], e[:, j], "--", color="tab:blue", lw=1.2, label="estimate (aligned)")
        ax.plot(e[0, i], e[0, j], "o", color="tab:blue", ms=6, label="start")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(f"trajectory, top view (up = {up})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, lw=0.3)
    ax.legend(loc="best", fontsize=8)


def _depth_panels(fig, gs, depth_pred: np.ndarray, depth_gt: np.ndarray | None) -> None:
    pred = np.asarray(depth_pred, dtype=np.float64)
    pred = np.where(np.isfinite(pred) & (pred > 0), pred, np.nan)
    title = "predicted depth"
    if depth_gt is not None:
        gt = np.asarray(depth_gt, dtype=np.float64)
        gt = np.where(np.isfinite(gt) & (gt > 0), gt, np.nan)
        both = np.isfinite(gt) & np.isfinite(pred) if gt.shape == pred.shape else None
        if both is not None and both.any():
            # Same colour scale for both images: show the prediction median-scaled, as the
            # metrics see it (monocular depth is up to scale).
            pred = pred * (np.median(gt[both]) / np.median(pred[both]))
            title = "predicted depth (median-scaled)"
        ref = gt if np.isfinite(gt).any() else pred
    else:
        ref = pred
    finite = ref[np.isfinite(ref)]
    vmin, vmax = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
    cols = 2 if depth_gt is not None else 1
    sub = gs.subgridspec(1, cols, wspace=0.08)
    images = [(pred, title)] + ([(gt, "ground-truth depth")] if depth_gt is not None else [])
    for k, (img, name) in enumerate(images):
        ax = fig.add_subplot(sub[0, k])
        im = ax.imshow(img, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes[-cols:], shrink=0.7, label="depth")


def _cloud_panel(ax, cloud: Cloud, up: str) -> None:
    (i, xl), (j, yl) = TOP_VIEWS[up]
    n = len(cloud)
    idx = np.arange(n)
    if n > _MAX_SCATTER:   # fixed seed: the same cloud always gives the same picture
        idx = np.sort(np.random.default_rng(0).choice(n, _MAX_SCATTER, replace=False))
    xyz = np.asarray(cloud.xyz)[idx]
    rgb = np.asarray(cloud.rgb, dtype=np.uint32)[idx]
    colors = np.stack([(rgb >> 16) & 0xFF, (rgb >> 8) & 0xFF, rgb & 0xFF], 1) / 255.0
    dyn = np.asarray(cloud.dynamic)[idx] > 0.5
    ax.scatter(xyz[~dyn, i], xyz[~dyn, j], c=colors[~dyn], s=1.0, lw=0, rasterized=True,
               label="static")
    if dyn.any():
        ax.scatter(xyz[dyn, i], xyz[dyn, j], c=colors[dyn], s=6.0, edgecolors="magenta",
                   linewidths=0.6, rasterized=True, label="dynamic (p > 0.5)")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(f"cloud, top view ({n} points)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, lw=0.3)
    ax.legend(loc="best", fontsize=8, markerscale=4)


def plot_summary(path_png: str | PathLike, est_T_aligned: np.ndarray, gt_T: np.ndarray | None,
                 depth_pred: np.ndarray | None = None, depth_gt: np.ndarray | None = None,
                 cloud: Cloud | None = None, title: str = "", metrics: dict | None = None,
                 size_px: tuple[int, int] = (1400, 600), dpi: int = 100, up: str = "-y") -> None:
    """Write a PNG of exactly ``size_px`` (width, height) pixels.

    Left: estimate (already aligned to ground truth) and ground truth from above; ``up`` names
    the world's up axis ('-y' optical frame, '+z' ROS / synthetic scenes).
    Right: predicted vs ground-truth depth when ``depth_pred`` is given, otherwise the cloud
    from above (rgb colours, dynamic points ringed in magenta), otherwise nothing.
    ``metrics`` (flat or one level nested dict) is printed under the plots.
    """
    w, h = size_px
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    text = _format_metrics(metrics)
    # Room under the axes: tick labels + x label (~60 px) plus the metrics text lines.
    line_px = 8 * 1.3 / 72 * dpi
    n_lines = text.count("\n") + 1 if text else 0
    bottom = min((60 + n_lines * line_px) / h, 0.5)
    has_right = depth_pred is not None or cloud is not None
    gs = fig.add_gridspec(1, 2 if has_right else 1, left=0.06, right=0.97, top=0.9,
                          bottom=bottom, wspace=0.2,
                          width_ratios=[1, 1.4] if has_right else None)
    _trajectory_panel(fig.add_subplot(gs[0, 0]), est_T_aligned, gt_T, up)
    if depth_pred is not None:
        _depth_panels(fig, gs[0, 1], depth_pred, depth_gt)
    elif cloud is not None:
        _cloud_panel(fig.add_subplot(gs[0, 1]), cloud, up)
    if title:
        fig.suptitle(title, fontsize=12)
    if text:
        fig.text(0.06, 0.01, text, family="monospace", fontsize=8, va="bottom", ha="left")
    fig.savefig(path_png, dpi=dpi, format="png")
