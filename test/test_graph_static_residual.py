"""graph_static_residual_px: a keypoint that fits the static world (small pose-based residual) is
not called dynamic, whatever the scorer says; larger residuals and unknown ones keep the
scorer's evidence."""
import numpy as np

from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.graph import KeypointGraph


def _always_dynamic(obs):
    """A scorer that calls every keypoint dynamic (the learned scorer's mistake, exaggerated)."""
    return np.ones(obs.ids.shape[0]), np.ones(obs.edges.shape[0])


def _run(threshold_px, frames=20):
    rng = np.random.default_rng(0)
    n = 60
    ids, px = np.arange(n), rng.uniform(0, 300, (n, 2))
    res = np.zeros((n, 2))
    res[:20, 0] = rng.uniform(0.05, 0.5, 20)     # fit the static world
    res[20:40, 0] = rng.uniform(3.0, 8.0, 20)    # do not
    res[40:] = np.nan                            # no residual (no landmark, not in a keyframe)
    cfg = make_config({"graph_scorer": "geometric", "graph_static_residual_px": threshold_px,
                       "graph_smoothing_steps": 0})
    g = KeypointGraph(cfg, _always_dynamic)
    g._ids, g._p = ids.copy(), np.ones(n)        # all flagged already
    for k in range(frames):
        out = g.dynamic_probability(ids, px, res)
    return out


def test_small_static_residual_clears_a_flag_the_scorer_keeps():
    out = _run(1.0)
    # Evidence capped at 0.5 x residual / threshold: at most 0.25 here.
    assert out.evidence[:20].max() <= 0.25 + 1e-12
    # Filtered: 20 frames of decay at graph_decay_rate (0.15) from 1 towards that evidence:
    # at most 0.25 + 0.85^20 (0.04), well below 0.5.
    assert out.p_dynamic[:20].max() < 0.3
    assert np.all(out.p_dynamic[20:40] > 0.99)           # real residuals: the scorer decides
    assert np.all(out.p_dynamic[40:] > 0.99)             # no residual: the belief is kept


def test_off_leaves_the_scorer_alone():
    out = _run(0.0)
    assert np.all(out.p_dynamic > 0.99)
