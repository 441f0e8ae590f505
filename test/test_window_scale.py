"""The window's refinements (bundle adjustment, joint refinement) must not let the map's scale
wander. With only the two oldest keyframes fixed -- a short baseline apart -- the scale was barely
held in the window and each refinement moved the free keyframes' scale a little: on the fast
preset the trajectory's scale over 10 frames swung by 37 % within 45 frames (without any window
refinement it stays within a few %)."""
import numpy as np

from sirenpose_ros.eval.metrics import ate, trajectory_length
from sirenpose_ros.synth.sequence import render_sequence

from pipeline_runs import process_sequence


def test_window_refinements_hold_the_scale():
    n = 45
    seq = render_sequence("fast", seed=0, n_frames=n, width=320, height=240)
    rs = process_sequence(seq, {"field_enabled": False}, n)
    posed = [i for i, r in enumerate(rs) if r.T_world_cam is not None]
    assert len(posed) == n
    P = np.stack([r.T_world_cam[:3, 3] for r in rs])
    G = seq.T_world_cam[:, :3, 3]
    # Scale of the estimate over every 10-frame stretch (estimate length / true length): one
    # number up to the monocular scale. Measured max/min: 1.37 with two fixed keyframes, 1.22 now.
    s = np.linalg.norm(P[10:] - P[:-10], axis=1) / np.linalg.norm(G[10:] - G[:-10], axis=1)
    assert s.max() / s.min() < 1.3
    # ... which is what the trajectory error shows (1.30 % of the path before, 0.91 % now).
    a = ate(np.stack([r.T_world_cam for r in rs]), seq.T_world_cam, align="sim3")
    assert a["rmse"] < 0.011 * trajectory_length(seq.T_world_cam)
