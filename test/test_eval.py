"""Evaluation metrics, summary plot and the evaluate CLI, on cases with known answers."""
import json
import struct

import numpy as np
import pytest

from sirenpose_ros.core.types import Cloud
from sirenpose_ros.eval.metrics import (apply_alignment, associate, ate, binary_f1,
                                        depth_metrics, fit_alignment, longest_lost_run,
                                        mask_iou, rotation_angle, rpe, tracked_share,
                                        trajectory_length, umeyama)
from sirenpose_ros.eval.plot import plot_summary
from sirenpose_ros.io.tum import quat_to_matrix, write_tum
from sirenpose_ros.tools.evaluate import main as evaluate_main


def _rot(rng):
    return quat_to_matrix(rng.normal(size=4))


def _axis_angle(axis, angle):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _trajectory(n=60, seed=0):
    """A smooth hand-held-like camera path (T_world_cam)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, 3] = np.stack([2 * np.sin(t), 0.2 * np.cos(3 * t), 3 * t / np.pi], 1)
    T[:, :3, :3] = [_axis_angle([0.1, 1, 0.05], 0.4 * np.sin(a)) for a in t]
    T[:, :3, 3] += rng.normal(scale=0.01, size=(n, 3))
    return T


# --------------------------------------------------------------------------- umeyama

def test_umeyama_recovers_random_sim3_exactly():
    rng = np.random.default_rng(0)
    for _ in range(20):
        src = rng.normal(size=(50, 3)) * [3, 1, 0.5]
        s, R, t = rng.uniform(0.1, 10), _rot(rng), rng.normal(scale=5, size=3)
        dst = s * src @ R.T + t
        s2, R2, t2 = umeyama(src, dst)
        assert abs(s2 - s) < 1e-9 * s
        np.testing.assert_allclose(R2, R, atol=1e-9)
        np.testing.assert_allclose(t2, t, atol=1e-9)
        # SE(3) variant on a rigid copy
        s3, R3, t3 = umeyama(src, src @ R.T + t, with_scale=False)
        assert s3 == 1.0
        np.testing.assert_allclose(R3, R, atol=1e-9)
        np.testing.assert_allclose(t3, t, atol=1e-9)


def test_umeyama_planar_points_where_svd_may_pick_a_reflection():
    # Coplanar points: the cross-covariance has a zero singular value, so the SVD's third axis
    # is arbitrary and the plain U V^T is a reflection about half the time.
    rng = np.random.default_rng(1)
    n_reflection_prone = 0
    for _ in range(40):
        src = np.c_[rng.normal(size=(30, 2)), np.zeros(30)]
        s, R, t = rng.uniform(0.5, 2), _rot(rng), rng.normal(size=3)
        dst = s * src @ R.T + t
        U, _, Vt = np.linalg.svd((dst - dst.mean(0)).T @ (src - src.mean(0)))
        n_reflection_prone += np.linalg.det(U @ Vt) < 0
        s2, R2, t2 = umeyama(src, dst)
        assert abs(s2 - s) < 1e-9
        np.testing.assert_allclose(R2, R, atol=1e-9)
        np.testing.assert_allclose(t2, t, atol=1e-9)
    assert n_reflection_prone > 0      # the case the det fix exists for did occur


def test_umeyama_mirrored_data_gives_a_proper_rotation():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(100, 3))
    dst = src * [1, 1, -1]                  # a mirror image: best orthogonal map is reflection
    s, R, t = umeyama(src, dst)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    # It must still be the best *rotation*: no random rotation does better.
    cost = np.sum((dst - (s * src @ R.T + t)) ** 2)
    for _ in range(200):
        Rr = _rot(rng)
        tr = dst.mean(0) - s * Rr @ src.mean(0)
        assert np.sum((dst - (s * src @ Rr.T + tr)) ** 2) >= cost - 1e-9


def test_umeyama_rejects_degenerate_input():
    line = np.outer(np.arange(10.0), [1, 2, 3])
    with pytest.raises(ValueError, match="collinear"):
        umeyama(line, line + 1)
    pts = np.eye(3)
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(pts[:2], pts[:2])
    with pytest.raises(ValueError):
        umeyama(pts, np.ones((3, 3)))           # all destinations coincide


# --------------------------------------------------------------------------- association

def test_associate_mutual_nearest_one_to_one():
    a = np.array([0, 100, 200, 300, 1000], np.int64)
    b = np.array([205, 2, 96, 140, 5000], np.int64)       # unsorted on purpose
    ia, ib = associate(a, b, max_dt_ns=100)
    # 300's nearest is 205, but 205 is taken by 200 (nearer): one-to-one leaves 300 out.
    np.testing.assert_array_equal(ia, [0, 1, 2])
    np.testing.assert_array_equal(ib, [1, 2, 0])
    ia, ib = associate(a, b, max_dt_ns=3)                  # only |0 - 2| <= 3
    np.testing.assert_array_equal(ia, [0])
    np.testing.assert_array_equal(ib, [1])
    ia, ib = associate(b, a, max_dt_ns=100)                # symmetric
    np.testing.assert_array_equal(ia, [0, 1, 2])
    np.testing.assert_array_equal(ib, [2, 0, 1])
    assert associate(a, np.zeros(0, np.int64), 10)[0].size == 0


# --------------------------------------------------------------------------- ATE / RPE

def _sim3_copy(T, s, R, t):
    """The same trajectory expressed in another world frame with another scale."""
    return apply_alignment(T, s, R, t)


def test_ate_of_a_similarity_copy_is_zero_with_sim3_only():
    rng = np.random.default_rng(3)
    gt = _trajectory()
    s, R, t = 0.37, _rot(rng), np.array([4.0, -1.0, 2.0])
    est = _sim3_copy(gt, s, R, t)
    r = ate(est, gt, align="sim3")
    assert r["rmse"] < 1e-9 and r["max"] < 1e-9
    assert r["scale"] == pytest.approx(1 / s, rel=1e-9)
    assert r["n"] == len(gt)
    assert ate(est, gt, align="none")["rmse"] > 1.0
    # SE(3) cannot undo the scale: error of the order of the trajectory size.
    assert ate(est, gt, align="se3")["rmse"] > 0.3
    # A rigid copy is exact under SE(3) as well.
    assert ate(_sim3_copy(gt, 1.0, R, t), gt, align="se3")["rmse"] < 1e-9


def test_ate_known_offset_without_alignment():
    gt = _trajectory(20)
    est = gt.copy()
    est[:, :3, 3] += [0.3, 0.0, 0.4]        # constant 0.5 offset
    r = ate(est, gt, align="none")
    for k in ("rmse", "mean", "median", "max"):
        assert r[k] == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError):
        ate(est, gt, align="affine")


def test_fit_alignment_maps_estimate_onto_ground_truth():
    rng = np.random.default_rng(4)
    gt = _trajectory(30)
    est = _sim3_copy(gt, 2.5, _rot(rng), rng.normal(size=3))
    aligned = apply_alignment(est, *fit_alignment(est, gt, "sim3"))
    np.testing.assert_allclose(aligned, gt, atol=1e-9)     # rotations too, not only positions


def test_rpe_detects_a_single_injected_jump_exactly():
    gt = _trajectory(40)
    n, k = len(gt), 17
    jump_t = np.array([0.12, -0.05, 0.09])                 # |jump_t| = sqrt(0.025)
    angle = np.radians(7.0)
    # World-frame jump J applied to every pose from frame k on: a rotation about the camera
    # centre at frame k followed by a translation. Only the pair (k-1, k) sees it, with
    # error rotation angle(J) and error translation |jump_t| exactly.
    c = gt[k, :3, 3]
    J = np.eye(4)
    J[:3, :3] = _axis_angle([0.3, -1, 0.5], angle)
    J[:3, 3] = c - J[:3, :3] @ c + jump_t
    est = gt.copy()
    est[k:] = J @ gt[k:]
    r = rpe(est, gt, delta=1, scale=1.0)
    assert r["n"] == n - 1
    assert r["trans_max"] == pytest.approx(np.sqrt(0.025), abs=1e-12)
    assert r["trans_rmse"] == pytest.approx(np.sqrt(0.025 / (n - 1)), abs=1e-12)
    assert r["rot_max_deg"] == pytest.approx(7.0, abs=1e-9)
    assert r["rot_rmse_deg"] == pytest.approx(7.0 / np.sqrt(n - 1), abs=1e-9)
    # delta = 2: the two pairs (k-2, k) and (k-1, k+1) straddle the jump; both see the full
    # rotation (the translation error of the second also depends on the lever arm to c).
    r2 = rpe(est, gt, delta=2, scale=1.0)
    assert r2["n"] == n - 2
    assert r2["rot_max_deg"] == pytest.approx(7.0, abs=1e-9)
    assert r2["rot_rmse_deg"] == pytest.approx(7.0 * np.sqrt(2 / (n - 2)), abs=1e-9)
    assert rpe(gt, gt)["trans_rmse"] == 0.0


def test_rpe_uses_sim3_scale_by_default():
    rng = np.random.default_rng(5)
    gt = _trajectory(30)
    est = _sim3_copy(gt, 0.5, _rot(rng), rng.normal(size=3))   # monocular: half size
    r = rpe(est, gt)
    assert r["scale"] == pytest.approx(2.0, rel=1e-9)
    assert r["trans_rmse"] < 1e-9 and r["rot_rmse_deg"] < 1e-6
    assert rpe(est, gt, scale=1.0)["trans_rmse"] > 0.01


def test_rotation_angle_accurate_small_and_near_pi():
    for a in (1e-9, 1e-5, 0.3, np.pi - 1e-6, np.pi):
        R = _axis_angle([1, 2, -0.5], a)
        assert rotation_angle(R) == pytest.approx(a, rel=1e-6, abs=1e-15)


def test_tracking_helpers_and_length():
    assert tracked_share(45, 60) == 0.75
    with pytest.raises(ValueError):
        tracked_share(61, 60)
    with pytest.raises(ValueError):
        tracked_share(0, 0)
    assert longest_lost_run([True, False, False, True, False, False, False, True]) == 3
    assert longest_lost_run([True] * 5) == 0
    assert longest_lost_run([False] * 4) == 4
    assert longest_lost_run([]) == 0
    T = np.tile(np.eye(4), (3, 1, 1))
    T[:, :3, 3] = [[0, 0, 0], [3, 4, 0], [3, 4, 1]]
    assert trajectory_length(T) == 6.0


# --------------------------------------------------------------------------- depth / masks

def test_depth_metrics_hand_computed():
    pred = np.array([[1.0, 2.0], [4.0, np.nan]])
    gt = np.array([[2.0, 4.0], [4.0, 5.0]])
    # Without scaling: p = [1, 2, 4], g = [2, 4, 4].
    r = depth_metrics(pred, gt, median_scale=False)
    assert r["n"] == 3 and r["coverage"] == 0.75
    assert r["abs_rel"] == pytest.approx(1 / 3)          # (1/2 + 2/4 + 0) / 3
    assert r["sq_rel"] == pytest.approx(0.5)             # (1/2 + 4/4 + 0) / 3
    assert r["rmse"] == pytest.approx(np.sqrt(5 / 3))    # sqrt((1 + 4 + 0) / 3)
    assert r["delta1"] == pytest.approx(1 / 3)           # ratios 2, 2, 1
    # Median scaling: median(g)/median(p) = 4/2 = 2 -> p = [2, 4, 8].
    r = depth_metrics(pred, gt)
    assert r["scale"] == 2.0
    assert r["abs_rel"] == pytest.approx(1 / 3)          # (0 + 0 + 4/4) / 3
    assert r["sq_rel"] == pytest.approx(4 / 3)           # (0 + 0 + 16/4) / 3
    assert r["rmse"] == pytest.approx(np.sqrt(16 / 3))
    assert r["delta1"] == pytest.approx(2 / 3)


def test_depth_metrics_invalid_pixels_and_mask():
    gt = np.full((3, 4), 2.0)
    gt[0, 0] = 0.0                                       # no ground truth here
    pred = np.full((3, 4), 1.0)
    pred[1, 1], pred[1, 2], pred[2, 0] = np.inf, -1.0, 0.0
    pred[2, 3] = 100.0                                    # a real error, but masked out below
    valid = np.ones((3, 4), bool)
    valid[2, 3] = False
    r = depth_metrics(pred, gt, valid=valid)
    assert r["n"] == 7                                   # 12 - gt0 - mask - inf, -1, 0
    assert r["coverage"] == pytest.approx(7 / 10)
    assert r["abs_rel"] == 0.0 and r["delta1"] == 1.0 and r["scale"] == 2.0
    r = depth_metrics(np.full((2, 2), np.nan), np.ones((2, 2)))
    assert r["n"] == 0 and np.isnan(r["abs_rel"]) and r["coverage"] == 0.0


def test_mask_iou_and_f1_known_masks():
    pred = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    gt = np.array([[0, 1, 1, 0], [0, 1, 1, 0]], bool)
    # intersection 3, union 6; precision 3/5, recall 3/4, F1 = 2 * .6 * .75 / 1.35 = 2/3
    assert mask_iou(pred, gt) == pytest.approx(0.5)
    f = binary_f1(pred, gt)
    assert f["precision"] == pytest.approx(0.6)
    assert f["recall"] == pytest.approx(0.75)
    assert f["f1"] == pytest.approx(2 / 3)
    empty = np.zeros((2, 4), bool)
    assert mask_iou(empty, empty) == 1.0
    assert binary_f1(empty, empty)["f1"] == 1.0
    assert mask_iou(pred, empty) == 0.0
    assert binary_f1(empty, gt) == {"precision": 1.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError):
        mask_iou(pred, gt[:, :3])


# --------------------------------------------------------------------------- plot and CLI

def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plot_summary_depth_and_cloud_variants(tmp_path):
    gt = _trajectory(50)
    est = gt.copy()
    est[:, :3, 3] += 0.02
    rng = np.random.default_rng(6)
    depth_gt = 1.0 + rng.random((48, 64))
    depth_pred = 0.5 * depth_gt
    depth_pred[:5] = np.nan
    p1 = tmp_path / "depth.png"
    plot_summary(p1, est, gt, depth_pred=depth_pred, depth_gt=depth_gt, title="synthetic",
                 metrics={"ate": {"rmse": 0.0346, "n": 50}, "abs_rel": 0.1})
    assert _png_size(p1) == (1400, 600)
    n = 3000
    cloud = Cloud(rng.normal(size=(n, 3)).astype(np.float32),
                  rng.integers(0, 2**24, n).astype(np.uint32),
                  (rng.random(n) > 0.8).astype(np.float32), np.zeros((n, 3), np.float32))
    p2 = tmp_path / "cloud.png"
    plot_summary(p2, est, gt, cloud=cloud, size_px=(800, 400))
    assert _png_size(p2) == (800, 400)
    p3 = tmp_path / "traj.png"
    plot_summary(p3, est, gt)
    assert _png_size(p3) == (1400, 600)
    assert p1.stat().st_size > 10_000 and p2.stat().st_size > 10_000


def test_evaluate_cli_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(7)
    gt = _trajectory(60)
    stamps = 1_700_000_000_000_000_000 + np.arange(60, dtype=np.int64) * 33_333_333
    est = _sim3_copy(gt, 0.4, _rot(rng), rng.normal(size=3))
    keep = np.r_[0:20, 30:60]                                 # 10 frames lost
    est_stamps = stamps[keep] + 1_000_000                     # 1 ms clock offset
    write_tum(tmp_path / "gt.tum", stamps, gt)
    write_tum(tmp_path / "est.tum", est_stamps, est[keep])
    m = evaluate_main(["--est", str(tmp_path / "est.tum"), "--gt", str(tmp_path / "gt.tum"),
                       "--n-frames", "60", "--json", str(tmp_path / "m.json"),
                       "--plot", str(tmp_path / "m.png")])
    assert m["n_matched"] == 50
    assert m["ate"]["rmse"] < 1e-9
    assert m["ate"]["scale"] == pytest.approx(2.5, rel=1e-9)
    assert m["rpe"]["trans_rmse"] < 1e-6                      # pair across the gap: delta 1
    assert m["tracked_share"] == pytest.approx(50 / 60)
    assert json.loads((tmp_path / "m.json").read_text())["n_matched"] == 50
    assert _png_size(tmp_path / "m.png") == (1400, 600)
    out = capsys.readouterr().out
    assert "ATE rmse (sim3)" in out and "83.3 %" in out
    # A 1 ms offset does not match with a 0.5 ms window.
    with pytest.raises(ValueError, match="only 0"):
        evaluate_main(["--est", str(tmp_path / "est.tum"), "--gt", str(tmp_path / "gt.tum"),
                       "--max-dt-ms", "0.5"])
