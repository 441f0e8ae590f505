"""Two-view initialisation with tracks of unequal quality (faint texture: a share of the tracks sits
on occlusion edges or drifts, 0.5-1 px off any epipolar geometry, the rest fits to ~0.1 px).

Weighting every inlier alike let the bad share set the noise level: the relative pose's covariance
overstated the uncertainty, so the provisional two-view poses of a low-texture start were withheld
(low_texture seed 0: frames 1-4 without a pose). With Cauchy weights at
the inliers' own noise level the covariance follows the consistent tracks and stays honest."""
import numpy as np

from sirenpose_ros.core import geometry as geo
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.window import SlidingWindowEstimator
from sirenpose_ros.eval.metrics import ate, trajectory_length
from sirenpose_ros.synth.sequence import render_sequence

from pipeline_runs import process_sequence


def _two_views(seed, f=250.0, n=150, bad_share=0.3):
    rng = np.random.default_rng(seed)
    X = np.c_[rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.uniform(4, 8, n)]
    R = geo.so3_exp(np.array([0.0, 0.01, 0.0]))
    t = np.array([0.12, 0.0, 0.04])
    x1 = X[:, :2] / X[:, 2:]
    X2 = X @ R.T + t
    x2 = X2[:, :2] / X2[:, 2:]
    x1 = x1 + rng.normal(0, 0.1 / f, x1.shape)
    x2 = x2 + rng.normal(0, 0.1 / f, x2.shape)
    bad = rng.random(n) < bad_share
    ang = rng.uniform(0, 2 * np.pi, n)
    off = np.c_[np.cos(ang), np.sin(ang)] * rng.uniform(0.4, 0.9, n)[:, None] / f
    x2[bad] += off[bad]
    return x1, x2, t / np.linalg.norm(t), f


def test_two_view_covariance_follows_the_consistent_tracks():
    err, std = [], []
    for seed in range(8):
        x1, x2, t_true, f = _two_views(seed)
        w = SlidingWindowEstimator(make_config({}))
        w._f = f
        _, tv = w._relative_pose(x1, x2, early_exit=False)
        assert tv is not None and tv["cov"] is not None
        err.append(np.degrees(np.arccos(np.clip(tv["t"] @ t_true, -1.0, 1.0))))
        std.append(np.degrees(np.sqrt(tv["cov"][3, 3] + tv["cov"][4, 4])))
    err, std = np.asarray(err), np.asarray(std)
    rms_err, rms_std = np.sqrt(np.mean(err ** 2)), np.sqrt(np.mean(std ** 2))
    # Accurate direction (measured: 1.4 deg RMS; unweighted 1.9) and a calibrated 1-sigma: the
    # unweighted covariance overstated it (2.2 deg RMS for 1.9 deg of error), the weighted one
    # gives about the error itself (1.35 deg for 1.4) -- neither far below nor far above.
    assert rms_err < 2.5
    assert 0.6 * rms_err < rms_std < 1.1 * rms_err


def test_low_texture_start_gets_provisional_poses():
    # low_texture seed 0: few, faint tracks. The old code had no pose for frames 1-4 of 10 (the
    # map waits for parallax until frame 7 and the provisional poses were withheld); then 2-3;
    # with the frontend's isotropy test (frontend_min_isotropy) none.
    n = 10
    seq = render_sequence("low_texture", seed=0, n_frames=n, width=320, height=240)
    rs = process_sequence(seq, {"field_enabled": False}, n)
    posed = [i for i, r in enumerate(rs) if r.T_world_cam is not None]
    assert len(posed) >= n - 2
    # ... and the poses are good ones: one similarity aligns them to within a few % of the path
    # (measured: 4.2 % over 8 posed frames without the isotropy test, 5.5 % over all 10 with it:
    # frames 2-3, posed now, are 14-15 mm off on this 0.15 m path).
    gt = seq.T_world_cam[posed]
    a = ate(np.stack([rs[i].T_world_cam for i in posed]), gt, align="sim3")
    assert a["rmse"] < 0.06 * trajectory_length(seq.T_world_cam)
