"""The window's refinements (bundle adjustment, joint refinement) must not let the map's scale
wander. With only the two oldest keyframes fixed -- a short baseline apart -- the scale was barely
held in the window and each refinement moved the free keyframes' scale a little: on the fast
preset the trajectory's scale over 10 frames swung by 37 % within 45 frames (without any window
refinement it stays within a few %)."""
import cv2
import numpy as np

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.core.types import Frame
from sirenpose_ros.eval.metrics import ate, trajectory_length
from sirenpose_ros.synth.sequence import render_sequence


def test_window_refinements_hold_the_scale():
    n = 45
    seq = render_sequence("fast", seed=0, n_frames=n, width=320, height=240)
    K = seq.K
    cam = CameraModel.pinhole(seq.width, seq.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    pipe = Pipeline(make_config({"field_enabled": False}))
    rs = [pipe.process(Frame(int(seq.stamps_ns[i]), cv2.cvtColor(seq.rgb[i], cv2.COLOR_RGB2GRAY),
                             seq.rgb[i], cam)) for i in range(n)]
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
