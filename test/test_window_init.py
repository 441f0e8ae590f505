"""Initialisation on a rendered dynamic sequence: frames before the map get poses (rotation-only
while the camera barely translates, then provisional two-view poses), in the map's world frame
and scale, accurate enough not to spoil the trajectory."""
import numpy as np

from sirenpose_ros.eval.metrics import ate, trajectory_length
from sirenpose_ros.synth.sequence import render_sequence

from pipeline_runs import process_sequence

N = 16


def test_frames_before_the_map_get_accurate_poses():
    # close_object: a person-sized box crosses close to a slow, mostly forward-moving camera; the
    # map waits ~10 frames for parallax (8 of the first 16 frames had no pose before).
    seq = render_sequence("close_object", seed=0, n_frames=N, width=320, height=240)
    rs = process_sequence(seq, {"field_enabled": False}, N)
    posed = [i for i, r in enumerate(rs) if r.T_world_cam is not None]
    init = next(i for i, r in enumerate(rs) if "initialised" in r.message)
    two_view = [i for i, r in enumerate(rs) if "two-view pose" in r.message]
    # At most two frames without a pose (the old code: 8). Which ones depends on the motion
    # GNN's prior for the crossing object (two with the v3 weights, one with v2).
    assert posed[0] == 0 and len(posed) >= N - 2
    assert two_view and max(two_view) < init                # provisional poses bridge to the map
    # Poses with a translation estimate (provisional two-view, then the map's; the rotation-only
    # ones of the first frames hold the reference's position): one similarity aligns them all,
    # i.e. the provisional poses are in the map's world frame and at its scale. Measured: 1.7 %
    # of this short path (2.6 mm, 0.05 % of the scene depth); a provisional pose with a wrong
    # translation direction (e.g. the sign of t) or scale is off by about its whole baseline.
    six = [i for i in posed if "rotation-only" not in rs[i].message]
    assert len(six) >= N - 5
    gt = seq.T_world_cam[six]
    a = ate(np.stack([rs[i].T_world_cam for i in six]), gt, align="sim3")
    assert a["rmse"] < 0.025 * trajectory_length(gt)
    assert all(np.isfinite(rs[i].covariance).all() for i in two_view)
