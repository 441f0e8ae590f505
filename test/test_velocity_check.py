"""scripts/velocity_check.py: its ground truth is right (a static surface point has zero
velocity), and a tiny end-to-end run prints a table row."""
import numpy as np

from script_loader import load_script


def _load():
    return load_script("velocity_check")


def test_ground_truth_of_a_static_point_does_not_move(tmp_path):
    vc = _load()
    from sirenpose_ros.tools.accuracy import load_sequence_cached
    seq, _ = load_sequence_cached("easy", 0, 3, 160, 120, tmp_path)
    px = np.stack(np.meshgrid(np.arange(10.3, 150, 13), np.arange(10.7, 110, 11)), -1).reshape(-1, 2)
    X0, m0 = vc.gt_points(seq, 0, px)
    T1 = np.linalg.inv(seq.T_world_cam[1])
    xc = X0 @ T1[:3, :3].T + T1[:3, 3]
    uv = xc @ seq.K.T
    X1, m1 = vc.gt_points(seq, 1, uv[:, :2] / uv[:, 2:])
    static = ~m0 & ~m1
    assert static.sum() > 50
    moved = np.linalg.norm(X1 - X0, axis=1)[static]
    assert np.median(moved) < 1e-3 * np.median(xc[static, 2])     # under 1 mm per metre of depth


def test_velocity_check_prints_a_row(tmp_path, capsys):
    assert _load().main(["--presets", "close_object", "--frames", "20", "--size", "160x120",
                         "--cache-dir", str(tmp_path)]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| close_object |")]
    assert len(rows) == 1
