"""SIREN depth field: initialisation, online fit of a known moving surface, warm start, reset."""
import math

import numpy as np
import pytest
import torch

from sirenpose_ros.core import field as fd
from sirenpose_ros.core.params import ParamError, validate


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks: one thread is as fast as two here, and immune to the other core being
    busy (two OpenMP threads on a loaded 2-core machine slow down many-fold)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def scene_inv_depth(u, v, t):
    """Tilted plane plus a bump that slides right over time (inverse depth 0.3 .. 1.0)."""
    c = -0.3 + 0.2 * t
    return 0.5 + 0.15 * u + 0.1 * v + 0.4 * np.exp(-((u - c) ** 2 + (v - 0.1) ** 2) / 0.08)


def make_est(**over):
    return fd.DepthFieldEstimator(validate(fd.PARAMS, {"field_device": "cpu", **over}))


def feed(est, rng, times, n=300, steps=None, fn=scene_inv_depth):
    out = None
    for t in times:
        uv = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        inv = fn(uv[:, 0], uv[:, 1], t).astype(np.float32)
        out = est.update(t, uv, inv, np.ones(n, np.float32), steps=steps)
    return out


def dense_truth(t, h, w, fn=scene_inv_depth):
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return fn(u, v, t)


def test_siren_init_statistics():
    hidden, omega0 = 64, 30.0
    net = fd.SirenField(hidden=hidden, layers=3, omega0=omega0, seed=3)
    first = net.sines[0].linear.weight.detach().numpy()
    assert first.shape == (hidden, 3)
    assert np.abs(first).max() <= 1.0 / 3 and np.abs(first).max() > 0.9 / 3
    np.testing.assert_allclose(first.std(), (1.0 / 3) / math.sqrt(3), rtol=0.15)  # U(-b, b)
    bound = math.sqrt(6.0 / hidden) / omega0
    for layer in net.sines[1:]:
        wgt = layer.linear.weight.detach().numpy()
        assert wgt.shape == (hidden, hidden)
        assert np.abs(wgt).max() <= bound and np.abs(wgt).max() > 0.95 * bound
        np.testing.assert_allclose(wgt.std(), bound / math.sqrt(3), rtol=0.05)
        assert abs(wgt.mean()) < 0.05 * bound
    assert len(net.sines) == 3 and all(lay.omega0 == omega0 for lay in net.sines)
    # SIREN property: hidden pre-activations omega0 * (W x + b) stay ~ unit-variance-ish, so the
    # field starts as a near constant (small output spread) instead of exploding or vanishing.
    x = torch.rand(4096, 3) * 2 - 1
    with torch.no_grad():
        inv = net(x)
    assert torch.all(inv > 0) and float(torch.log(inv).std()) < 0.2
    # Same seed, same network.
    net2 = fd.SirenField(hidden=hidden, layers=3, omega0=omega0, seed=3)
    assert torch.equal(net2.sines[1].linear.weight, net.sines[1].linear.weight)


def test_fits_moving_surface_from_sparse_samples():
    est = make_est()
    rng = np.random.default_rng(0)
    assert not est.fitted
    assert np.isnan(est.render(0.0, 6, 8)).all()
    times = [i / 10 for i in range(8)]
    feed(est, rng, times, steps=40)                # 8 frames x 40 steps = 320 steps in all
    assert est.fitted
    h, w = 60, 80
    pred = est.render(times[-1], h, w)
    assert pred.shape == (h, w) and pred.dtype == np.float32
    rel = np.abs(pred - dense_truth(times[-1], h, w)) / dense_truth(times[-1], h, w)
    # Bound: median relative inverse-depth error < 3 %, 95th percentile < 10 %.
    assert np.median(rel) < 0.03, np.median(rel)
    assert np.percentile(rel, 95) < 0.10, np.percentile(rel, 95)
    # An older frame in the window is represented too (the field is F(u, v, t)).
    truth_old = dense_truth(times[-4], h, w)
    rel_old = np.abs(est.render(times[-4], h, w) - truth_old) / truth_old
    assert np.median(rel_old) < 0.05
    # normalize_pixels maps pixel centres 0 / W-1 to -1 / +1.
    np.testing.assert_allclose(fd.normalize_pixels([[0, 0], [639, 479], [319.5, 239.5]], 640, 480),
                               [[-1, -1], [1, 1], [0, 0]], atol=1e-6)
    # render() and query() agree on the grid (corner-aligned mapping).
    q = est.query(times[-1], np.array([[-1, -1], [1, 1], [1, -1]], np.float32))
    np.testing.assert_allclose(q, [pred[0, 0], pred[-1, -1], pred[0, -1]], rtol=1e-5)


def _steps_to(est, thr, max_steps=400):
    for k in range(1, max_steps + 1):
        if est.step(1)["data_loss"] < thr:
            return k
    return max_steps + 1


def test_warm_start_needs_fewer_steps_than_scratch():
    # Full-batch (batch > samples) so the loss is a deterministic function of the parameters.
    over = {"field_batch_size": 4096, "field_window_frames": 4}
    times = [i / 10 for i in range(6)]
    changed = lambda u, v, t: scene_inv_depth(u, v, t) * (1.0 + 0.05 * u)  # noqa: E731
    warm = make_est(**over)
    feed(warm, np.random.default_rng(1), times, n=150, steps=40)
    converged = warm.step(1)["data_loss"]
    # The scene changes slightly (new frame with a 5 % tilt): store it, count steps to re-fit.
    r = feed(warm, np.random.default_rng(2), [0.6], n=150, steps=0, fn=changed)
    assert r["steps"] == 0
    thr = max(3 * converged, 2e-4)
    n_warm = _steps_to(warm, thr)
    # From scratch on exactly the same window of samples.
    cold = make_est(**over)
    feed(cold, np.random.default_rng(1), times, n=150, steps=0)
    feed(cold, np.random.default_rng(2), [0.6], n=150, steps=0, fn=changed)
    n_cold = _steps_to(cold, thr)
    assert n_warm < 0.5 * n_cold, (n_warm, n_cold, thr)


def test_update_reports_and_ignores_invalid_samples():
    est = make_est(field_min_samples=10)
    uv = np.array([[0, 0], [0.5, 0.5], [np.nan, 0], [0.1, 0.1], [0.2, 0.2]], np.float32)
    inv = np.array([0.5, 0.5, 0.5, -1.0, 0.5], np.float32)
    w = np.array([1, 1, 1, 1, 0], np.float32)
    r = est.update(0.0, uv, inv, w)
    assert r["steps"] == 10 and np.isfinite(r["loss"]) and r["ms"] > 0
    assert est._count[est._newest_slot] == 2       # NaN uv, negative depth, zero weight dropped
    assert not est.fitted                          # fewer than field_min_samples
    with pytest.raises(ValueError):
        est.update(0.1, uv, inv[:3], w)


def test_reset_and_time_going_backwards():
    est = make_est(field_min_samples=10)
    rng = np.random.default_rng(0)
    fresh = [p.detach().clone() for p in est.net.parameters()]
    feed(est, rng, [0.0, 0.1, 0.2], steps=5)
    assert est.fitted
    est.reset()
    assert not est.fitted and est.newest_time is None
    assert np.isnan(est.render(0.2, 4, 4)).all()
    assert all(torch.equal(a, b) for a, b in zip(fresh, est.net.parameters()))
    feed(est, rng, [5.0, 5.1], steps=5)
    assert est.fitted and est.newest_time == 5.1
    # A bag loop (time jumps back) resets instead of mixing two timelines.
    feed(est, rng, [1.0], steps=5)
    assert est.newest_time == 1.0 and sum(c > 0 for c in est._count) == 1


def test_old_samples_beyond_horizon_are_ignored():
    est = make_est(field_time_horizon_s=0.5, field_window_frames=8)
    rng = np.random.default_rng(0)
    feed(est, rng, [0.0, 0.1, 1.0, 1.1], steps=1)
    assert est._window_valid_samples() == 600       # 0.0 and 0.1 are > 0.5 s older than 1.1


def test_params_validation():
    cfg = validate(fd.PARAMS, {"field_hidden": 32})
    assert cfg["field_hidden"] == 32 and cfg["field_omega0"] == 30.0
    with pytest.raises(ParamError):
        validate(fd.PARAMS, {"field_hidden": 4})
    with pytest.raises(ParamError):
        validate(fd.PARAMS, {"field_device": "tpu"})
    with pytest.raises(ParamError):
        validate(fd.PARAMS, {"field_steps_per_frame": 1.5})
    assert all(s.name.startswith("field_") and len(s.description) > 20 for s in fd.PARAMS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_path_graph_matches_eager():
    times = [i / 10 for i in range(8)]
    outs = []
    for graph in (True, False):
        est = fd.DepthFieldEstimator(validate(fd.PARAMS, {"field_device": "cuda",
                                                          "field_cuda_graph": graph}))
        assert est._use_graph == graph
        feed(est, np.random.default_rng(0), times, steps=20)
        pred = est.render(times[-1], 60, 80)
        rel = np.abs(pred - dense_truth(times[-1], 60, 80)) / dense_truth(times[-1], 60, 80)
        assert est.fitted and np.median(rel) < 0.03
        outs.append(pred)
    # Same seed, same samples: the captured graph computes the same steps as eager mode (the
    # small window is padded to the fixed graph batch with zero weights).
    np.testing.assert_allclose(outs[0], outs[1], rtol=2e-3)
