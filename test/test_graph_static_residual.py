"""graph_static_residual_px / _frames: a keypoint that keeps fitting the static world (small
pose-based residual, frame after frame) is not called dynamic, whatever the scorer says; larger
residuals, unknown ones and a fit that does not last keep the scorer's evidence."""
import numpy as np

from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.graph import KeypointGraph


def _always_dynamic(obs):
    """A scorer that calls every keypoint dynamic (the learned scorer's mistake, exaggerated)."""
    return np.ones(obs.ids.shape[0]), np.ones(obs.edges.shape[0])


def _run(threshold_px, frames=30, fit_frames=10, broken_at=None):
    rng = np.random.default_rng(0)
    n = 60
    ids, px = np.arange(n), rng.uniform(0, 300, (n, 2))
    res = np.zeros((n, 2))
    res[:20, 0] = rng.uniform(0.05, 0.5, 20)     # fit the static world
    res[20:40, 0] = rng.uniform(3.0, 8.0, 20)    # do not
    res[40:] = np.nan                            # no residual (no landmark, not in a keyframe)
    cfg = make_config({"graph_scorer": "geometric", "graph_static_residual_px": threshold_px,
                       "graph_static_residual_frames": fit_frames, "graph_smoothing_steps": 0})
    g = KeypointGraph(cfg, _always_dynamic)
    g._ids, g._p, g._fit_frames = ids.copy(), np.ones(n), np.zeros(n, np.int64)   # all flagged already
    for k in range(frames):
        r = res.copy()
        if broken_at is not None and k % broken_at == broken_at - 1:
            r[:20, 0] = 2.0                      # one frame off the static world in every few
        out = g.dynamic_probability(ids, px, r)
    return out


def test_small_static_residual_clears_a_flag_the_scorer_keeps():
    out = _run(1.0)
    # Evidence capped at 0.5 x residual / threshold: at most 0.25 here.
    assert out.evidence[:20].max() <= 0.25 + 1e-12
    # Capped from the 10th frame on, then 20 frames of decay at graph_decay_rate (0.15) from 1
    # towards that evidence: at most 0.25 + 0.85^20 (0.04), well below 0.5.
    assert out.p_dynamic[:20].max() < 0.3
    assert np.all(out.p_dynamic[20:40] > 0.99)           # real residuals: the scorer decides
    assert np.all(out.p_dynamic[40:] > 0.99)             # no residual: the belief is kept


def test_off_leaves_the_scorer_alone():
    out = _run(0.0)
    assert np.all(out.p_dynamic > 0.99)


def test_a_fit_that_does_not_last_does_not_clear():
    # Off the static world every 8th frame: never 10 fitting frames in a row.
    out = _run(1.0, broken_at=8)
    assert np.all(out.p_dynamic[:20] > 0.99)
    # ... but a shorter requirement is met between the breaks: the flag fades (each break
    # raises it again at graph_rise_rate; measured max 0.63 after the last 4 capped frames).
    out = _run(1.0, fit_frames=3, broken_at=8)
    assert out.p_dynamic[:20].max() < 0.8
