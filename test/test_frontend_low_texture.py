"""KLT frontend on the low_texture preset: enough long, correct, well-spread tracks.

The preset's walls and floor are nearly uniform (a faint shade and a few marks). The detector
lowers its relative threshold there and finds faint corners, but with OpenCV's default KLT
texture test (minEigThreshold 1e-4) most of them were dropped at the next frame: ~250 of 350
tracks died every frame and the estimator waited or drifted on the few survivors.
"""
import cv2
import numpy as np
import pytest

from sirenpose_ros.core import frontend
from sirenpose_ros.core.config import Config
from sirenpose_ros.core.params import validate
from sirenpose_ros.synth.sequence import render_sequence

N_FRAMES = 12          # tracks detected in frame 1 are 10 frames old at the last frame
W, H = 320, 240
GRID_COLS, GRID_ROWS = 8, 6


@pytest.fixture(scope="module")
def low_texture_seq():
    return render_sequence("low_texture", seed=0, n_frames=N_FRAMES, width=W, height=H)


def _long_tracks(seq, **overrides):
    """Tracks alive from frame 1 to the last frame: (frame-1 px, last px), both (N, 2)."""
    fe = frontend.KLTFrontend(Config(validate(frontend.PARAMS, overrides)))
    first = None
    for i in range(N_FRAMES):
        tracks = fe.track(cv2.cvtColor(seq.rgb[i], cv2.COLOR_RGB2GRAY))
        if i == 1:
            first = dict(zip(tracks.ids.tolist(), tracks.px))
    old = tracks.age >= N_FRAMES - 2
    p1 = np.array([first[i] for i in tracks.ids[old].tolist()]).reshape(-1, 2)
    return p1, tracks.px[old]


def _ground_truth_error(seq, p1, pn):
    """Pixel error of each track at the last frame against the ground-truth projection of its
    frame-1 point (rendered depth and poses); NaN where either end lies on a moving object."""
    last = N_FRAMES - 1
    u1, v1 = np.round(p1).astype(int).T
    un, vn = np.clip(np.round(pn).astype(int), 0, [W - 1, H - 1]).T
    static = (seq.mask[1, v1, u1] == 0) & (seq.mask[last, vn, un] == 0)
    X = (np.c_[p1, np.ones(len(p1))] @ np.linalg.inv(seq.K).T) * seq.depth[1, v1, u1][:, None]
    T = np.linalg.inv(seq.T_world_cam[last]) @ seq.T_world_cam[1]
    q = (X @ T[:3, :3].T + T[:3, 3]) @ seq.K.T
    err = np.linalg.norm(q[:, :2] / q[:, 2:] - pn, axis=1)
    return np.where(static, err, np.nan)


def _cells(px):
    cx = np.clip((px[:, 0] * GRID_COLS / W).astype(int), 0, GRID_COLS - 1)
    cy = np.clip((px[:, 1] * GRID_ROWS / H).astype(int), 0, GRID_ROWS - 1)
    return np.unique(cy * GRID_COLS + cx).size


def test_low_texture_keeps_many_correct_spread_tracks(low_texture_seq):
    seq = low_texture_seq
    p1, pn = _long_tracks(seq)
    err = _ground_truth_error(seq, p1, pn)
    good = np.isfinite(err) & (err < 1.0)
    # ~110 correct 10-frame tracks over ~40 of the 48 cells (the old frontend: ~30 over ~24):
    # the two-view initialisation and the window need tracks that live, everywhere in the image.
    assert good.sum() >= 70, good.sum()
    assert _cells(pn[good]) >= 32, _cells(pn[good])
    # The tracks kept are real: most agree with the ground truth (faint texture tracks less
    # precisely than strong corners, hence the 1 px bar and the share, not every track).
    static = np.isfinite(err)
    assert good.sum() >= 0.75 * static.sum()
    assert np.median(err[static]) < 0.6


def test_opencv_default_texture_test_loses_the_faint_tracks(low_texture_seq):
    """The parameter is what makes the difference (and the test above can fail): with
    OpenCV's default threshold the same sequence keeps far fewer long tracks."""
    seq = low_texture_seq
    p_new, _ = _long_tracks(seq)
    p_old, _ = _long_tracks(seq, frontend_klt_min_eigenvalue=1e-4)
    assert len(p_old) < 0.5 * len(p_new)


@pytest.mark.parametrize("seed", [1, 2])
def test_low_texture_faint_edges_do_not_become_tracks(seed):
    """With the detection threshold lowered, faint edges pass as corners; KLT slides along
    them (aperture problem), pixels over a few frames, and on low_texture seed 1 those tracks
    bent the two-view initialisation by ~10 degrees of translation direction. The isotropy test
    (frontend_min_isotropy) keeps them out: few 10-frame tracks stay more than 2 px off."""
    seq = render_sequence("low_texture", seed=seed, n_frames=N_FRAMES, width=W, height=H)
    p1, pn = _long_tracks(seq)
    err = _ground_truth_error(seq, p1, pn)
    err = err[np.isfinite(err)]
    # Measured: 6 % (seed 1) and 4 % (seed 2) with the test, 23 % and 11 % without.
    assert err.size >= 70, err.size
    assert np.mean(err > 2.0) < 0.08, np.mean(err > 2.0)
    # The parameter is what makes the difference (so the assertion above can fail). The centre
    # check (frontend_center_window_px) also drops many sliding tracks (10 % and 5 % left > 2 px
    # off with it alone), so it is off here too: this is the frontend without either guard.
    p1, pn = _long_tracks(seq, frontend_min_isotropy=0.0, frontend_center_window_px=0)
    err_off = _ground_truth_error(seq, p1, pn)
    assert np.mean(err_off[np.isfinite(err_off)] > 2.0) >= 0.1
