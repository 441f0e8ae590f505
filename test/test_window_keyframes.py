"""Keyframe decisions while a large moving object hides most of the map: a keyframe asked for
only because few landmarks are tracked must not come every frame (keyframes a frame apart add
no landmarks and push the wide-baseline keyframes out of the window)."""
import numpy as np

from sirenpose_ros.core import window
from sirenpose_ros.core.config import Config
from sirenpose_ros.core.params import validate

F = 250.0


def _decisions(n_tracked, frames=6, **kw):
    """_need_keyframe over ``frames`` frames with no image motion, ``n_tracked`` of the keyframe's
    200 landmarks tracked (the rest hidden), as many as at the last keyframe."""
    w = window.SlidingWindowEstimator(Config(validate(window.PARAMS, kw)))
    w._f = F
    ids = np.arange(200, dtype=np.int64)
    xn = np.random.default_rng(0).uniform(-0.5, 0.5, (200, 2))
    w.keyframes = [window.Keyframe(0, np.eye(4), ids, xn)]
    w._kf_landmarks_seen = n_tracked
    tracked = np.arange(200) < n_tracked
    out = []
    for _ in range(frames):
        kf = w._need_keyframe(ids, xn, tracked)
        if kf:
            w._frames_since_kf = 0          # as update_map does when it takes a keyframe
        out.append(kf)
    return out


def test_few_tracked_landmarks_ask_for_a_keyframe_every_few_frames_not_every_frame():
    few = 30                      # below 3 x window_min_inliers (45)
    assert _decisions(few) == [False, False, True, False, False, True]
    assert _decisions(few, window_kf_few_landmarks_min_frames=1) == [True] * 6   # the old rule
    assert not any(_decisions(150))   # enough landmarks, no motion: no keyframe
