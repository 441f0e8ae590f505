"""Tools of the accuracy benchmark and the real-data checks: row configs, scores, targets,
report, the SfM wrapper (when pycolmap is installed) and the CPU plumbing on a short render."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sirenpose_ros.core.config import make_config, pipeline_params
from sirenpose_ros.eval.sfm_reference import have_pycolmap, relative_pose_errors
from sirenpose_ros.tools import accuracy as A
from sirenpose_ros.tools import real_data as R


def pose(R_: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R_
    T[:3, 3] = t
    return T


def rot_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def rot_x(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[1.0, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def gt_trajectory(n: int = 12) -> np.ndarray:
    """A curved, non-collinear path with turning orientation."""
    s = np.linspace(0, 1, n)
    return np.stack([pose(rot_z(20 * si) @ rot_x(5 * si), [si, 0.3 * np.sin(3 * si), 0.1 * si ** 2])
                     for si in s])


def similarity(T: np.ndarray, scale: float, R_: np.ndarray, t) -> np.ndarray:
    """World change x -> scale R x + t applied to camera-to-world poses."""
    out = T.copy()
    out[:, :3, :3] = R_ @ T[:, :3, :3]
    out[:, :3, 3] = scale * T[:, :3, 3] @ R_.T + np.asarray(t)
    return out


# --------------------------------------------------------------------------- row configs

def test_every_available_row_is_a_valid_config_and_missing_params_make_a_row_unavailable():
    names = {s.name for s in pipeline_params()}
    for name, row in A.ROWS.items():
        values, missing = A.row_config(row)
        if row.kind != "pipeline":
            assert (values, missing) == ({}, [])
            continue
        if values is None:
            assert missing and all(m not in names for m in missing)
        else:
            make_config(values)                       # raises on a bad name or value
            assert all(k in values and values[k] == v for k, v in row.overrides.items())
    fake = A.Row("x", {"field_enabled": False, "no_such_param_xyz": 1}, optional={"nope_abc": 2})
    assert A.row_config(fake) == (None, ["no_such_param_xyz"])
    ok = A.Row("y", {"field_enabled": False}, optional={"nope_abc": 2, "graph_prior": 0.2})
    values, missing = A.row_config(ok, {"cloud_enabled": False})
    assert missing == [] and values == {"field_enabled": False, "graph_prior": 0.2,
                                        "cloud_enabled": False}   # unknown optional dropped


def test_ablation_rows_switch_off_what_they_name():
    values, missing = A.row_config(A.ROWS["static_world"])
    assert not missing and make_config(values).window_static_world is True
    assert not A.ROWS["static_world"].dynamic_output
    values, missing = A.row_config(A.ROWS["no_physics"])
    cfg = make_config(values)
    assert not missing and cfg.loss_velocity_weight == 0 and cfg.loss_acceleration_weight == 0
    assert cfg.loss_camera_motion_weight == 0 and cfg.loss_reprojection_weight > 0
    values, _ = A.row_config(A.ROWS["no_gnn"])
    assert make_config(values).graph_scorer == "geometric"
    assert make_config(A.row_config(A.ROWS["learned_frontend"])[0]).pipeline_frontend == "xfeat"
    full = make_config(A.row_config(A.ROWS["full"])[0])
    assert full.pipeline_frontend == "klt" and full.graph_scorer == "gnn" and full.joint_enabled
    assert make_config(A.row_config(A.ROWS["no_joint"])[0]).joint_enabled is False


def test_cpu_devices_sets_device_params_unless_given():
    out = A.cpu_devices({"field_device": "auto"})
    assert out["field_device"] == "auto"
    others = [s.name for s in pipeline_params() if s.name.endswith("_device") and s.name != "field_device"]
    assert all(out[n] == "cpu" for n in others)


# --------------------------------------------------------------------------- scores

def test_trajectory_scores_are_zero_for_a_similar_copy_and_count_lost_frames():
    gt = gt_trajectory()
    est = similarity(gt, 0.37, rot_z(70) @ rot_x(30), [2, -1, 5])
    est[[0, 1, 2]] = np.nan                      # lost while initialising
    s = A.trajectory_scores(est, gt, reference_length=2.0)
    assert s["tracked_share"] == pytest.approx(9 / 12)
    assert s["ate"] < 1e-9 and s["rpe_t"] < 1e-9 and s["rpe_r_deg"] < 1e-6
    assert s["sim3_scale"] == pytest.approx(1 / 0.37)
    assert s["rpe_pairs"] == 8
    assert s["longest_lost_run"] == 3 and s["last_lost_frame"] == 2


def test_rpe_never_spans_a_gap_but_ate_sees_the_jump():
    gt = gt_trajectory()
    est = gt.copy()
    est[6:, :3, 3] += [0.2, 0.0, 0.0]            # a jump hidden in the gap at frame 5
    est[5] = np.nan
    r = A.rpe_consecutive(est, gt, scale=1.0)
    assert r["rpe_pairs"] == 9                   # (0,1)..(3,4) and (6,7)..(10,11)
    assert r["rpe_t"] < 1e-9 and r["rpe_r_deg"] < 1e-6
    est_joined = est.copy()
    est_joined[5] = gt[5]                        # with frame 5 posed, one pair sees the jump
    assert A.rpe_consecutive(est_joined, gt, scale=1.0)["rpe_t"] > 0.01
    assert A.trajectory_scores(est, gt, 1.0)["ate"] > 0.02      # Sim(3) spreads the 0.2 m jump


def test_trajectory_scores_with_too_few_poses_report_why():
    gt = gt_trajectory()
    est = np.full_like(gt, np.nan)
    est[4:6] = gt[4:6]
    s = A.trajectory_scores(est, gt, 1.0)
    assert np.isnan(s["ate"]) and "ATE needs 3" in s["trajectory_error"]
    assert s["tracked_share"] == pytest.approx(2 / 12)


def test_relative_pose_errors_measure_rotation_and_translation_direction():
    gt = gt_trajectory(5)
    est = similarity(gt, 3.0, rot_z(40), [1, 2, 3])    # same relative poses up to scale
    e = relative_pose_errors(est, gt)
    assert e["n"] == 4 and e["rot_median_deg"] < 1e-6 and e["dir_median_deg"] < 1e-4
    bad = est.copy()
    # Frame 2 turned by 3 degrees about its own optical axis and its position moved sideways.
    bad[2, :3, :3] = bad[2, :3, :3] @ rot_z(3)
    step = bad[2, :3, 3] - bad[1, :3, 3]
    side = np.cross(step, [0, 0, 1.0])
    bad[2, :3, 3] = bad[1, :3, 3] + np.linalg.norm(step) * (
        np.cos(np.radians(10)) * step / np.linalg.norm(step)
        + np.sin(np.radians(10)) * side / np.linalg.norm(side))
    e = relative_pose_errors(bad, gt)
    assert e["rot_err_deg"][1] == pytest.approx(3.0, abs=1e-6)   # pair (1, 2)
    assert e["dir_err_deg"][1] == pytest.approx(10.0, abs=1e-6)
    assert e["rot_err_deg"][0] < 1e-6 and e["dir_err_deg"][0] < 1e-4
    bad[3] = np.nan                                                # only pairs both posed
    assert relative_pose_errors(bad, gt)["pairs"].tolist() == [[0, 1], [1, 2]]


# --------------------------------------------------------------------------- targets, report

def _result(preset, row, **kw):
    base = {"preset": preset, "row": row, "label": A.ROWS[row].label, "ate_pct_of": "path length",
            "moving_share": 0.3, "path_length_m": 1.0, "median_depth_m": 4.0, "resets": 0,
            "fps": 20.0, "ran": {"frontend": "KLTFrontend", "motion_scorer": "GeometricScorer",
                                 "field": "DepthFieldEstimator"}}
    base.update(kw)
    return base


def test_check_targets_thresholds_and_the_static_world_comparison():
    results = [
        _result("large_dynamic", "full", ate=0.004, ate_pct=0.4, tracked_share=0.95,
                dyn_kp_f1=0.9, depth_abs_rel=0.1, depth_delta1=0.9),
        _result("large_dynamic", "static_world", ate=0.01, ate_pct=1.0, tracked_share=1.0),
        _result("easy", "full", moving_share=0.05, ate=0.02, ate_pct=2.0, tracked_share=0.9,
                dyn_kp_f1=None, depth_abs_rel=None, depth_delta1=None),
        _result("easy", "static_world", moving_share=0.05, ate=0.001, tracked_share=1.0),
    ]
    t = {(x["preset"], "".join(x["target"].split()[:3])): x["met"]
         for x in A.check_targets(results)}
    assert t[("large_dynamic", "ATE<=1")] is True
    assert t[("large_dynamic", "frameslost<=")] is True          # exactly 5 % lost passes
    assert t[("large_dynamic", "dynamic-keypointF1>=")] is True
    assert t[("large_dynamic", "depthAbsRel")] is True
    assert t[("large_dynamic", "ATE<=1/2")] is True             # 0.004 <= 0.5 * 0.01
    assert t[("easy", "ATE<=1")] is False and t[("easy", "frameslost<=")] is False
    assert t[("easy", "dynamic-keypointF1>=")] is None            # not scored
    assert t[("easy", "depthAbsRel")] is False                     # no depth fails the target
    assert ("easy", "ATE<=1/2") not in t                        # < 20 % moving pixels
    assert A.check_targets(results, "learned_frontend") == []     # no such rows here


def test_markdown_report_has_a_line_per_row_and_marks_unavailable_rows():
    results = [_result("fast", "full", ate=0.01, ate_pct=0.5, tracked_share=1.0, rpe_t=0.001,
                       rpe_r_deg=0.05, depth_abs_rel=0.12, depth_delta1=0.9, dyn_mask_iou=0.7,
                       dyn_kp_f1=0.86),
               {"preset": "fast", "row": "no_physics", "label": "no physics terms",
                "status": "not available", "missing": ["window_physics_enabled"]}]
    md = A.markdown_report(results, ["full", "no_physics"], "sirenpose_accuracy --out x",
                           "abc1234", "2026-01-01", "test machine")
    assert "| full method (defaults) | 0.0100 | 0.50 | 0.0010 | 0.050 | 100 % | 0 | 0.120 | 0.900 | 0.700 | 0.860 | 20.0 |" in md
    assert "not available yet: needs parameter(s) window_physics_enabled" in md
    assert "this run: `abc1234`" in md and "sirenpose_accuracy --out x" in md
    table_lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "fast" not in ln]
    assert all(ln.count("|") == 13 for ln in table_lines if ln.startswith("| full method (defaults)"))


# --------------------------------------------------------------------------- real-data helpers

def test_frame_stamps_from_tum_names_else_from_fps():
    st, src = R.frame_stamps(["1341847980.722988.png", "1341847981.726650.png"], 24.0)
    assert src == "file names" and st.tolist() == [1341847980722988000, 1341847981726650000]
    st, src = R.frame_stamps(["00000.jpg", "00001.jpg", "00002.jpg"], 25.0)
    assert src == "fps" and np.diff(st).tolist() == [40_000_000, 40_000_000]


def test_tracking_summary_tracked_through_counts_from_the_map_and_needs_no_reset():
    def frames(posed, reset, kf=None):
        kf = kf if kf is not None else posed
        return [{"index": i, "posed": bool(p), "reset": bool(r), "keyframe": bool(k),
                 "keypoints": 10, "dynamic_keypoints": 2, "message": "reset" if r else ""}
                for i, (p, r, k) in enumerate(zip(posed, reset, kf))]
    s = R.tracking_summary(frames([0, 0, 1, 1, 1], [0] * 5), 1.0)
    assert s["tracked_through"] and s["map_init_frame"] == 2 and s["fps"] == 5.0
    # A pose before the map (rotation-only while initialising), then the map at frame 3.
    s = R.tracking_summary(frames([1, 0, 0, 1, 1, 1], [0] * 6, [0, 0, 0, 1, 0, 0]), 1.0)
    assert s["tracked_through"] and s["first_pose_frame"] == 0 and s["map_init_frame"] == 3
    s = R.tracking_summary(frames([0, 1, 1, 0, 1], [0] * 5), 1.0)
    assert not s["tracked_through"] and s["longest_lost_run_after_init"] == 1
    s = R.tracking_summary(frames([0, 1, 1, 1, 1], [0, 0, 0, 1, 0]), 1.0)
    assert not s["tracked_through"] and s["resets_after_init"] == 1
    s = R.tracking_summary(frames([1, 1, 1], [0] * 3, [0, 0, 0]), 1.0)
    assert not s["tracked_through"] and s["map_init_frame"] is None     # never built a map
    assert R.pick_overlay_frames(frames([0, 1, 1, 1, 1, 1, 1, 1], [0] * 8), 3) == [1, 4, 7]


# --------------------------------------------------------------------------- on a short render

@pytest.fixture(scope="module")
def short_sequence():
    from sirenpose_ros.synth.sequence import render_sequence
    # 'fast': the camera moves ~2 m in 24 frames, so a monocular start is quick and every 4th
    # frame has a wide enough baseline for SfM.
    return render_sequence("fast", seed=0, n_frames=24, width=160, height=120)


def test_evaluate_one_runs_the_pipeline_and_scores_it(short_sequence, tmp_path):
    seq = short_sequence
    gt = tmp_path / "gt.npz"
    np.savez(gt, depth=seq.depth, mask=seq.mask, stamps_ns=seq.stamps_ns)
    r = A.evaluate_one("fast", "no_field", seq, gt, {"field_enabled": False})
    assert r["ran"]["field"] == "none" and r["ran"]["frontend"]
    assert r["tracked_share"] > 0.5 and np.isfinite(r["ate"]) and r["ate_pct"] < 20.0
    assert r["rpe_pairs"] >= 5 and r["fps"] > 0 and r["cpu_ms_per_frame"] > 0
    assert np.isnan(r["depth_abs_rel"])                   # no field, no depth
    assert 0.0 <= r["dyn_kp_f1"] <= 1.0                   # keypoints were scored against the mask
    json.dumps(A.json_safe(r), allow_nan=False)           # the stored form is strict JSON


def test_cli_writes_results_and_report_and_reuses_them(short_sequence, tmp_path, monkeypatch):
    calls = []

    def fake_load(preset, seed, n, w, h, cache_dir):
        calls.append(preset)
        return short_sequence, None
    monkeypatch.setattr(A, "load_sequence_cached", fake_load)
    out, md = tmp_path / "acc", tmp_path / "docs" / "accuracy.md"
    monkeypatch.setitem(A.ROWS, "future", A.Row("future row", {"no_such_param_xyz": 1}))
    argv = ["--out", str(out), "--frames", "24", "--size", "160x120", "--presets", "fast",
            "--rows", "no_field,future", "--set", "pipeline_frontend:=klt",
            "--markdown", str(md)]
    assert A.main(argv) == 0
    stored = json.loads((out / "results" / "fast__no_field.json").read_text())
    assert stored["row"] == "no_field" and stored["key"]["overrides"]["field_enabled"] is False
    assert stored["ran"]["frontend"] == "KLTFrontend"              # --set reached the row
    assert "GNN weights" in stored["code"]                        # which code produced it
    text = md.read_text()
    assert "### fast" in text and "no SIREN field" in text
    assert "not available yet: needs parameter(s) no_such_param_xyz" in text
    # --reuse takes the stored result instead of running the pipeline again.
    monkeypatch.setattr(A, "evaluate_one", lambda *a, **k: pytest.fail("should have reused"))
    assert A.main(argv + ["--reuse"]) == 0


@pytest.mark.skipif(not have_pycolmap(), reason="pycolmap not installed (requirements-bench.txt)")
def test_sfm_reference_recovers_the_rendered_camera_motion(short_sequence):
    from sirenpose_ros.eval.sfm_reference import run_sfm_on_frames
    seq = short_sequence
    sub = slice(0, 24, 4)                         # 6 frames, ~0.35 m apart
    r = run_sfm_on_frames(seq.rgb[sub], seq.K, matching="exhaustive", num_threads=2)
    assert r.registered_share == 1.0 and r.n_models == 1 and r.n_points3d > 50
    assert r.mean_reproj_error_px < 1.0
    s = A.trajectory_scores(r.T_world_cam, seq.T_world_cam[sub], seq.meta["trajectory_length_m"])
    assert s["ate_pct"] < 5.0                     # measured ~1.8 % of the 2.1 m path
    e = relative_pose_errors(r.T_world_cam, seq.T_world_cam[sub])
    assert e["rot_median_deg"] < 2.0 and e["dir_median_deg"] < 20.0


def test_markdown_section_is_replaced_between_marks_and_the_rest_kept(tmp_path):
    path = tmp_path / "accuracy.md"
    A.write_markdown_section(path, "# table v1")
    assert path.read_text().count("table v1") == 1
    path.write_text(path.read_text() + "\n## Real data\nhand-written\n")
    A.write_markdown_section(path, "# table v2")
    text = path.read_text()
    assert "table v1" not in text and "table v2" in text and "hand-written" in text
    assert text.index("table v2") < text.index("## Real data")


def test_an_estimate_that_does_not_move_is_scored_against_the_spread_of_the_true_path():
    gt = gt_trajectory()
    est = gt.copy()
    est[:, :3, 3] = [0.5, 0.5, 0.5]              # "camera still": rotation only
    s = A.trajectory_scores(est, gt, 1.0)
    g = gt[:, :3, 3]
    assert s["ate"] == pytest.approx(np.sqrt(np.mean(np.sum((g - g.mean(0)) ** 2, 1))))
    assert s["ate_align"].startswith("position only")
    assert s["rpe_r_deg"] < 1e-6 and s["rpe_t"] > 0      # rotation right, motion missed


def test_compare_with_sfm_separates_pairs_across_a_reset():
    gt = gt_trajectory(6)
    pipe = similarity(gt, 2.0, rot_z(30), [0, 1, 0])
    pipe[3:, :3, 3] = 5.0 * pipe[3:, :3, 3]           # re-initialised at frame 3, new scale
    pipe[5] = np.nan
    c = R.compare_with_sfm(pipe, gt, np.array([0, 0, 0, 1, 0, 0], bool))
    assert c["pair_indices"] == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert c["across_reset"] == [False, False, True, False] and c["pairs_within_map"] == 3
    assert c["rot_median_deg_within_map"] < 1e-6 and c["dir_median_deg_within_map"] < 1e-4
    assert max(c["dir_err_deg"]) > 1.0                 # the pair across the reset disagrees
    none = R.compare_with_sfm(np.full_like(gt, np.nan), gt, np.zeros(6, bool))
    assert none["pairs"] == 0
