"""Motion GNN: shipped weights (safetensors, no pickle), shapes, equivariance, clear weight-file
errors, and node F1 on a held-out synthetic sequence with the GNN driving the real pipeline."""
import json
import struct

import cv2
import numpy as np
import pytest
import torch

from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.graph import GraphObservation, delaunay_edges
from sirenpose_ros.core.motion_gnn import (EDGE_FEATURES, FEATURE_VERSION, NODE_FEATURES, GNNScorer,
                                           MotionGNN, default_weights_path, load_model, save_weights)

# Held-out check: seed 7 is in neither the training seeds (2-6, 8) nor the evaluation seeds
# (100, 101) of the shipped weights (models/MOTION_GNN.md).
HELDOUT = dict(preset="multi_object", seed=7, n_frames=45, width=320, height=240)
# Measured on HELDOUT: see the F1_BOUND note in models/MOTION_GNN.md.
F1_BOUND = 0.72               # measured 0.774 with the shipped weights (the previous ones: 0.720)




def _graph(n, rng):
    px = rng.uniform([0, 0], [320, 240], (n, 2))
    edges = delaunay_edges(px, 80.0)
    res = rng.normal(0, 1.0, (n, 2))
    res[rng.random(n) < 0.2] = np.nan
    return GraphObservation(np.arange(n, dtype=np.int64) * 3 + 5, px, res, edges, np.full(n, 0.1))


def test_shipped_weights_are_small_safetensors_and_run():
    path = default_weights_path()
    assert path.is_file(), path
    raw = path.read_bytes()
    assert len(raw) < 1_000_000
    # safetensors layout: u64 header length, JSON header, raw tensor bytes (no pickle opcodes).
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    assert header["__metadata__"]["feature_version"]
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")
    scorer = GNNScorer(make_config({}))
    obs = _graph(60, np.random.default_rng(0))
    p, r = scorer(obs)
    assert p.shape == (60,) and r.shape == (obs.edges.shape[0],) and obs.edges.shape[0] > 60
    assert np.all((p >= 0) & (p <= 1)) and np.all((r >= 0) & (r <= 1))
    # Empty frame and a frame without edges.
    scorer.reset()
    empty = GraphObservation(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 2)),
                             np.zeros((0, 2), np.int64), np.zeros(0))
    p0, r0 = scorer(empty)
    assert p0.shape == (0,) and r0.shape == (0,)


def test_permutation_equivariance(one_torch_thread):
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    model = MotionGNN().eval()
    n = 40
    px = rng.uniform(0, 300, (n, 2))
    e = torch.from_numpy(delaunay_edges(px, 1e9))
    x = torch.randn(n, NODE_FEATURES)
    ea = torch.randn(e.shape[0], EDGE_FEATURES)
    perm = torch.from_numpy(rng.permutation(n))
    inv = torch.argsort(perm)                      # new index of old node k is inv[k]
    with torch.no_grad():
        node, edge = model(x, e, ea)
        node_p, edge_p = model(x[perm], inv[e], ea)
    torch.testing.assert_close(node_p, node[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(edge_p, edge, atol=1e-5, rtol=1e-5)
    # Swapping the two ends of an edge changes nothing either (undirected graph).
    with torch.no_grad():
        _, edge_s = model(x, e.flip(1), ea)
    torch.testing.assert_close(edge_s, edge, atol=1e-5, rtol=1e-5)

    # Whole scorer (features included) on one frame: shuffled nodes -> shuffled outputs.
    obs = _graph(50, rng)
    p, r = GNNScorer(None)(obs)
    q = rng.permutation(50)
    iq = np.argsort(q)
    obs_q = GraphObservation(obs.ids[q], obs.px[q], obs.residual_px[q], iq[obs.edges], obs.previous[q])
    pq, rq = GNNScorer(None)(obs_q)
    np.testing.assert_allclose(pq, p[q], atol=1e-6)
    np.testing.assert_allclose(rq, r, atol=1e-6)


def test_weight_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="motion GNN weights not found"):
        load_model(tmp_path / "nope.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_model(bad)
    # A pickle (torch.save) is refused, never unpickled.
    pkl = tmp_path / "model.pt"
    torch.save(MotionGNN().state_dict(), pkl)
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_model(pkl)
    # Valid safetensors of another architecture: a clear mismatch error, not a torch traceback.
    other = tmp_path / "other.safetensors"
    save_weights(MotionGNN(hidden=16, layers=1), other)
    from safetensors.torch import load_file, save_file
    state = load_file(str(other))
    state.pop("node_out.2.bias")
    save_file(state, str(other), metadata={"feature_version": str(FEATURE_VERSION), "hidden": "16", "layers": "1"})
    with pytest.raises(ValueError, match="do not match the network"):
        load_model(other)
    # Weights trained on other input features are refused (they would run and silently mislead).
    save_file(state, str(other), metadata={"feature_version": str(FEATURE_VERSION + 100)})
    with pytest.raises(ValueError, match="feature version"):
        load_model(other)
    with pytest.raises(FileNotFoundError):
        GNNScorer(make_config({}), weights=str(tmp_path / "missing.safetensors"))


def test_reset_forgets_history():
    rng = np.random.default_rng(2)
    obs = _graph(30, rng)
    s = GNNScorer(None)
    s(obs)
    moved = GraphObservation(obs.ids, obs.px + 1.0, obs.residual_px, obs.edges, obs.previous + 0.05)
    with_hist, _ = s(moved)
    s.reset()
    fresh, _ = s(moved)
    np.testing.assert_allclose(fresh, GNNScorer(None)(moved)[0], atol=1e-7)
    assert not np.allclose(with_hist, fresh)


def test_heldout_sequence_f1():
    from sirenpose_ros.core.camera import CameraModel
    from sirenpose_ros.core.pipeline import Pipeline
    from sirenpose_ros.core.types import Frame
    from sirenpose_ros.synth import render_sequence
    seq = render_sequence(**HELDOUT)
    cfg = make_config({"field_enabled": False, "cloud_enabled": False})
    pipe = Pipeline(cfg)
    pipe.graph.scorer = GNNScorer(cfg)
    K = seq.K
    cam = CameraModel.pinhole(seq.width, seq.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    tp = fp = fn = 0
    for i in range(len(seq)):
        gray = cv2.cvtColor(seq.rgb[i], cv2.COLOR_RGB2GRAY)
        res = pipe.process(Frame(int(seq.stamps_ns[i]), gray, None, cam))
        uv = np.rint(res.keypoints).astype(int)
        y = seq.mask[i][uv[:, 1].clip(0, seq.height - 1), uv[:, 0].clip(0, seq.width - 1)] > 0
        pred = res.dynamic_prob >= 0.5
        tp += int(np.sum(pred & y)); fp += int(np.sum(pred & ~y)); fn += int(np.sum(~pred & y))
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    assert tp + fn > 100, "the held-out sequence must contain dynamic keypoints"
    assert f1 > F1_BOUND, (f1, tp, fp, fn)


def test_motion_models_fit_the_static_majority():
    """The pose-free fits (reweighted least squares, all gaps at once) recover the camera's
    motion from the static tracks while a third of the tracks move on their own, and leave the
    moving ones with large offsets; gaps without enough history give no fit."""
    from sirenpose_ros.core.motion_gnn import MIN_FIT_POINTS, _motion_models
    rng = np.random.default_rng(3)
    n = 300
    X = np.c_[rng.uniform(-3, 3, (n, 2)), rng.uniform(3, 8, n)]
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])

    def project(P):
        x = P @ K.T
        return x[:, :2] / x[:, 2:]

    th = 0.03
    R = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    now = project(X)
    rot_only = project(X @ R.T)                                   # rotation: a homography
    translated = project(X @ R.T + [0.2, 0.02, 0.05])             # translation: parallax, F only
    moving = rng.random(n) < 0.33
    p0 = np.stack([rot_only, translated, translated])
    p0 = p0 + rng.normal(0, 0.1, p0.shape)
    p0[:, moving] += rng.uniform(4, 10, (3, moving.sum(), 2)) * rng.choice([-1, 1], (3, moving.sum(), 2))
    have = np.ones((3, n), bool)
    have[2, MIN_FIT_POINTS - 1:] = False                          # third gap: too few tracks
    hres, epi, h_share, f_share, ok = _motion_models(p0, now, have, np.full(n, 0.9))
    assert ok.tolist() == [True, True, False]
    h_static = np.linalg.norm(hres[0, ~moving], axis=1)
    h_moving = np.linalg.norm(hres[0, moving], axis=1)
    assert np.median(h_static) < 0.3 and np.median(h_moving) > 3.0
    assert np.median(epi[1, ~moving]) < 0.5 and np.median(epi[1, moving]) > 2.0
    assert 0.55 < h_share[0] < 0.75 and 0.55 < f_share[1] < 0.75
    assert np.all(hres[2] == 0) and np.all(epi[2] == 0)
    # The graph's belief (w_static) sharpens the fit: with the movers known, static F residuals
    # shrink to the noise.
    w = np.where(moving, 0.0, 1.0)
    _, epi_w, _, _, _ = _motion_models(p0, now, have, w)
    assert np.median(epi_w[1, ~moving]) <= np.median(epi[1, ~moving]) + 1e-9
    assert np.median(epi_w[1, ~moving]) < 0.15


def _moving_sequence(n=120, frames=14, seed=5):
    """Observations of a camera panning over static points while a third of them move on their
    own, with tracks lost and born: what MotionFeatures sees in the pipeline."""
    rng = np.random.default_rng(seed)
    px = rng.uniform([0, 0], [320, 240], (n, 2))
    ids = np.arange(n, dtype=np.int64)
    moving = rng.random(n) < 0.33
    step = rng.normal(0, 2.0, (n, 2)) * moving[:, None]
    next_id = n
    for f in range(frames):
        px = px + [1.5, -0.5] + step + rng.normal(0, 0.1, px.shape)
        if f % 4 == 3:                      # a few tracks die, new ones are born
            lost = rng.random(n) < 0.1
            ids[lost] = np.arange(next_id, next_id + lost.sum())
            next_id += int(lost.sum())
        res = np.where(moving[:, None], step, rng.normal(0, 0.3, (n, 2)))
        res[rng.random(n) < 0.15] = np.nan
        yield GraphObservation(ids.copy(), px.copy(), res, delaunay_edges(px, 80.0),
                               np.where(moving, 0.6, 0.1))


def test_numpy_network_equals_torch(one_torch_thread):
    """The CPU forward pass (NumPy, factored first layers, sparse per-node sums) is the torch
    module's function: logits agree to float32 round-off on features of a real sequence, for the
    shipped weights and a random model, isolated nodes and edge-less graphs included."""
    from sirenpose_ros.core.motion_gnn import MotionFeatures, NumpyMotionGNN
    torch.manual_seed(0)
    models = [load_model(), MotionGNN(hidden=16, layers=3).eval()]
    feats = MotionFeatures()
    checked = 0
    for obs in _moving_sequence():
        x, ea, _ = feats(obs)
        e = obs.edges[obs.edges[:, 0] != 3]           # node 3 has no edge: gets no messages
        ea = ea[obs.edges[:, 0] != 3]
        for model in models:
            with torch.no_grad():
                node_t, edge_t = model(torch.from_numpy(x), torch.from_numpy(e), torch.from_numpy(ea))
            node_n, edge_n = NumpyMotionGNN(model)(x, e, ea)
            assert node_n.dtype == np.float32 and node_n.shape == (x.shape[0],)
            scale = 1.0 + np.abs(node_t.numpy()).max()
            np.testing.assert_allclose(node_n, node_t.numpy(), atol=2e-5 * scale, rtol=0)
            np.testing.assert_allclose(edge_n, edge_t.numpy(), atol=2e-5 * (1.0 + np.abs(edge_t.numpy()).max()), rtol=0)
            checked += 1
    assert checked == 28
    # No edges at all: every node is isolated.
    x = np.random.default_rng(0).normal(size=(7, NODE_FEATURES)).astype(np.float32)
    no_e, no_ea = np.zeros((0, 2), np.int64), np.zeros((0, EDGE_FEATURES), np.float32)
    with torch.no_grad():
        node_t, _ = models[0](torch.from_numpy(x), torch.from_numpy(no_e), torch.from_numpy(no_ea))
    node_n, edge_n = NumpyMotionGNN(models[0])(x, no_e, no_ea)
    np.testing.assert_allclose(node_n, node_t.numpy(), atol=1e-5)
    assert edge_n.shape == (0,)
