"""graph_scorer_max_hz: the motion scorer runs at a capped rate; frames in between carry the
filtered probabilities and the last scored edges."""
import numpy as np

from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.graph import GeometricScorer, KeypointGraph


class CountingScorer(GeometricScorer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0

    def __call__(self, obs):
        self.calls += 1
        return super().__call__(obs)


def _frames(n, rng):
    ids = np.arange(60)
    px = rng.uniform(0, 300, (60, 2))
    for k in range(n):
        res = np.zeros((60, 2))
        res[:15] = 8.0                          # tracks 0-14 move
        keep = np.ones(60, bool)
        keep[20 + k % 5] = False                # one track missing per frame
        yield ids[keep], px[keep], res[keep]


def test_scorer_runs_at_the_capped_rate_and_frames_between_carry_beliefs_and_edges():
    rng = np.random.default_rng(0)
    cfg = make_config({"graph_scorer": "geometric", "graph_scorer_max_hz": 30.0})
    graph = KeypointGraph(cfg, CountingScorer(cfg))
    dt = int(1e9 / 60)                         # a 60 Hz camera
    last_scored = None
    for k, (ids, px, res) in enumerate(_frames(12, rng)):
        before = graph.scorer.calls
        prior = graph.prior(ids)
        g = graph.dynamic_probability(ids, px, res, stamp_ns=k * dt)
        if graph.scorer.calls > before:
            last_scored = (ids, g)
            continue
        # Between scored frames: the beliefs as they were, edges among the tracks still here.
        assert np.array_equal(g.p_dynamic, prior)
        sid, sg = last_scored
        scored_pairs = {tuple(sorted(e)) for e in sid[sg.edges].tolist()}
        pairs = [tuple(sorted(e)) for e in ids[g.edges].tolist()]
        assert pairs and set(pairs) <= scored_pairs
        assert len(pairs) < len(scored_pairs) or set(ids) >= set(sid)
        assert np.all(g.edges[:, 0] < g.edges[:, 1])
    assert graph.scorer.calls == 6            # every other frame of 12
    p = graph.prior(np.arange(60))
    assert p[:15].min() > p[30:].max()         # the moving tracks were still found


def test_a_30_hz_camera_is_scored_on_every_frame_by_default():
    rng = np.random.default_rng(2)
    cfg = make_config({"graph_scorer": "geometric"})
    graph = KeypointGraph(cfg, CountingScorer(cfg))
    for k, (ids, px, res) in enumerate(_frames(6, rng)):
        graph.dynamic_probability(ids, px, res, stamp_ns=k * int(1e9 / 30))
    assert graph.scorer.calls == 6


def test_without_a_cap_every_frame_is_scored():
    rng = np.random.default_rng(1)
    cfg = make_config({"graph_scorer": "geometric", "graph_scorer_max_hz": 0.0})
    graph = KeypointGraph(cfg, CountingScorer(cfg))
    for k, (ids, px, res) in enumerate(_frames(5, rng)):
        graph.dynamic_probability(ids, px, res, stamp_ns=k * int(1e9 / 60))
    assert graph.scorer.calls == 5
