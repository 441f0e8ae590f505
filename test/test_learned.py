"""Learned frontend: XFeat keypoints, LighterGlue / MNN matching, tracks with stable ids.

Ground truth comes from the synthetic renderer: a static pixel of frame a, back-projected with
the exact depth and moved by the exact poses, lands at a known position in frame b.

``python test/test_learned.py`` (not collected by pytest) prints the measurements of the report:
timings, match precision and track survival of XFeat and of the KLT frontend on the same frames.
"""
import hashlib
import pickle
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from sirenpose_ros.core import frontend as klt
from sirenpose_ros.core import learned
from sirenpose_ros.core import xfeat_frontend as xf
from sirenpose_ros.core.config import Config
from sirenpose_ros.core.params import validate
from sirenpose_ros.inference.runtime import make_runner
from sirenpose_ros.synth.sequence import render_sequence

W, H = 320, 240


def _cfg(**kw):
    return Config(validate(xf.PARAMS, {"xfeat_backend": "torch", "xfeat_device": "cpu", **kw}))


def gt_project(seq, a: int, b: int, px: np.ndarray):
    """Ground-truth position in frame b of pixels ``px`` (N, 2) of frame a, and whether it is
    valid: static in both frames, in front of camera b, inside it and not occluded there."""
    h, w = seq.depth.shape[1:]
    ia = np.round(px).astype(int)
    ia[:, 0] = ia[:, 0].clip(0, w - 1)
    ia[:, 1] = ia[:, 1].clip(0, h - 1)
    z = seq.depth[a][ia[:, 1], ia[:, 0]].astype(np.float64)
    X = (np.linalg.inv(seq.K) @ np.c_[px, np.ones(len(px))].T).T * z[:, None]
    T_b_a = np.linalg.inv(seq.T_world_cam[b]) @ seq.T_world_cam[a]
    Xb = X @ T_b_a[:3, :3].T + T_b_a[:3, 3]
    uvw = Xb @ seq.K.T
    uv = uvw[:, :2] / np.maximum(uvw[:, 2:3], 1e-9)
    ib = np.round(uv).astype(int)
    inside = (Xb[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    ib[:, 0] = ib[:, 0].clip(0, w - 1)
    ib[:, 1] = ib[:, 1].clip(0, h - 1)
    zb = seq.depth[b][ib[:, 1], ib[:, 0]]
    valid = (inside & np.isfinite(z) & (seq.mask[a][ia[:, 1], ia[:, 0]] == 0)
             & (seq.mask[b][ib[:, 1], ib[:, 0]] == 0) & (np.abs(zb - Xb[:, 2]) < 0.02 * Xb[:, 2]))
    return uv, valid


def track_errors(seq, t0, t1, a: int, b: int) -> np.ndarray:
    """Distance to the ground truth of every track present in both frames (valid GT only)."""
    _, i0, i1 = np.intersect1d(t0.ids, t1.ids, return_indices=True)
    uv, valid = gt_project(seq, a, b, t0.px[i0].astype(np.float64))
    return np.linalg.norm(uv[valid] - t1.px[i1][valid], axis=1)


@pytest.fixture(scope="module")
def seq():
    return render_sequence("easy", seed=0, n_frames=6, width=W, height=H)


@pytest.fixture(scope="module")
def grays(seq):
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in seq.rgb]


@pytest.fixture(scope="module")
def detector():
    nw, nh = learned.network_size(W, H, 640)
    runner = make_runner(learned.xfeat_spec(nh, nw), "torch", "cpu")
    return learned.XFeatDetector(runner, (W, H), (nw, nh))


# ----------------------------------------------------------------------------- weights

class _NotATensor:
    pass


def test_weights_load_without_pickle_code(tmp_path):
    for path in (learned.default_xfeat_weights(), learned.default_lighterglue_weights()):
        state = learned.load_weights(path)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    # A file that needs arbitrary unpickling is refused (weights_only=True), not executed.
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"x": _NotATensor()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        learned.load_weights(bad)


def test_missing_weight_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "xfeat.pt"
    with pytest.raises(FileNotFoundError, match="weight file not found.*nope"):
        learned.load_weights(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        learned.xfeat_spec(224, 320, missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        learned.lighterglue_spec(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        xf.XFeatFrontend(_cfg(xfeat_lighterglue_weights=str(missing)))


def test_building_never_downloads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a download was attempted")
    import kornia.feature.lightglue as klg
    monkeypatch.setattr(klg, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    for spec in (learned.xfeat_spec(64, 96), learned.lighterglue_spec(example_points=32)):
        out = make_runner(spec, "torch", "cpu")(*spec.example_inputs())
        assert len(out) == len(spec.output_names)
        with open(learned.default_xfeat_weights() if "dense" in spec.name
                  else learned.default_lighterglue_weights(), "rb") as f:
            assert spec.weights_id == hashlib.sha256(f.read()).hexdigest()


def test_lighterglue_forward_equals_kornia():
    """Our export-friendly forward gives kornia's LightGlue log assignment (no pruning)."""
    net = learned.build_lighterglue()
    k0, d0, k1, d1 = learned.lighterglue_spec(example_points=64).example_inputs()
    with torch.inference_mode():
        ours = net(k0, d0, k1, d1)
        # kornia normalises pixel keypoints by the image size: give it pixels of a 2x2 image.
        ref = net.net({"image0": {"keypoints": k0 + 1, "descriptors": d0, "image_size": torch.tensor([[2, 2]])},
                       "image1": {"keypoints": k1 + 1, "descriptors": d1, "image_size": torch.tensor([[2, 2]])}})
    la = ref["log_assignment"][:, :-1, :-1]
    assert ours.shape == la.shape == (1, 64, 57)
    assert torch.allclose(ours, la, rtol=1e-4, atol=1e-3)     # log-probabilities of -5..-40


# ----------------------------------------------------------------------------- detection

def test_keypoints_inside_subpixel_normalised_and_spread(detector, grays):
    kp = detector.detect(grays[0], 256, grid=(8, 6))
    px = kp.px.numpy()
    assert len(kp) == 256 and kp.desc.shape == (256, 64)
    assert np.all(px >= 0) and np.all(px[:, 0] <= W - 1) and np.all(px[:, 1] <= H - 1)
    frac = np.abs(px - np.round(px))
    assert np.mean(np.any(frac > 0.02, axis=1)) > 0.5           # sub-pixel, not integer
    assert torch.allclose(kp.desc.norm(dim=1), torch.ones(256), atol=1e-5)
    assert torch.all(kp.scores > 0)
    cols = np.clip((px[:, 0] * 8 / W).astype(int), 0, 7)
    rows = np.clip((px[:, 1] * 6 / H).astype(int), 0, 5)
    assert np.unique(rows * 8 + cols).size >= 40                 # most of the 48 cells are used
    # Without sub-pixel refinement the positions are the integer network pixels, rescaled.
    kp_int = detector.detect(grays[0], 256, grid=(8, 6), subpixel=False)
    net = kp_int.px_net.numpy()
    assert np.allclose(net, np.round(net))


def test_select_spread_fills_budget_and_respects_occupancy():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * torch.tensor([100.0, 100.0])
    xy[:400, 0] *= 0.25                              # most candidates crowd the left quarter
    scores = torch.rand(500, generator=g)
    pick = learned.select_spread(xy, scores, 40, (100, 100), (4, 1))
    assert pick.numel() == 40 and torch.unique(pick).numel() == 40
    cells = (xy[pick, 0] / 25).long()
    assert torch.bincount(cells, minlength=4).min() >= 10     # each column got its share
    # Cells already holding points take fewer new ones.
    occ = torch.tensor([[5.0, 50.0]] * 10)
    pick = learned.select_spread(xy, scores, 30, (100, 100), (4, 1), occupied=occ)
    assert (xy[pick, 0] < 25).sum() == 0


# ----------------------------------------------------------------------------- matching

def test_lighterglue_matches_are_correct(seq, grays, detector):
    matcher = learned.LighterGlueMatcher(make_runner(learned.lighterglue_spec(), "torch", "cpu"))
    kp0, kp1 = detector.detect(grays[0], 256), detector.detect(grays[1], 256)
    i0, i1, prob = matcher.match(kp0, kp1, 0.2)
    assert len(i0) >= 120 and torch.all(prob > 0.2)
    uv, valid = gt_project(seq, 0, 1, kp0.px[i0].numpy().astype(np.float64))
    err = np.linalg.norm(uv - kp1.px[i1].numpy(), axis=1)[valid]
    assert valid.sum() >= 100
    # Measured 0.98 (and no error above 5 px) at 512 keypoints.
    assert np.mean(err < 2.0) >= 0.9
    assert np.median(err) < 0.8


def test_mnn_matches(seq, grays, detector):
    kp0, kp1 = detector.detect(grays[0], 256), detector.detect(grays[1], 256)
    i0, i1, sim = learned.match_mnn(kp0.desc, kp1.desc, 0.82)
    assert len(i0) >= 120 and torch.all(sim > 0.82)
    assert torch.unique(i1).numel() == len(i1)                   # mutual: one-to-one
    uv, valid = gt_project(seq, 0, 1, kp0.px[i0].numpy().astype(np.float64))
    err = np.linalg.norm(uv - kp1.px[i1].numpy(), axis=1)[valid]
    assert np.mean(err < 2.0) >= 0.8                             # measured 0.90 at 512


# ----------------------------------------------------------------------------- frontend

@pytest.mark.parametrize("matcher", ["lighterglue", "mnn"])
def test_track_ids_persist_over_frames(seq, grays, matcher):
    fe = xf.XFeatFrontend(_cfg(xfeat_top_k=256, xfeat_matcher=matcher))
    tracks = [fe.track(g) for g in grays]
    t0 = tracks[0]
    assert len(t0) == 256 and np.all(t0.age == 0) and t0.ids.tolist() == list(range(256))
    seen = set(t0.ids.tolist())
    for k, t in enumerate(tracks[1:], start=1):
        assert len(t) == 256 and t.px.dtype == np.float32 and t.ids.dtype == np.int64
        assert np.unique(t.ids).size == len(t)
        new = ~np.isin(t.ids, list(seen))
        assert np.all(t.age[new] == 0) and np.all(t.age[~new] >= 1) and np.all(t.age <= k)
        assert new.sum() < len(t) / 2                             # most tracks continue
        if new.any():
            assert t.ids[new].min() > max(seen)                   # ids are never reused
        seen |= set(t.ids.tolist())
        # Continued tracks stay on their ground-truth point.
        err = track_errors(seq, tracks[k - 1], t, k - 1, k)
        assert np.mean(err < 2.0) >= (0.9 if matcher == "lighterglue" else 0.8)
    # Tracks born in frame 0 are still there five frames later, on their point.
    survivors = np.isin(t0.ids, tracks[5].ids)
    assert survivors.sum() >= 0.4 * len(t0)
    err = track_errors(seq, t0, tracks[5], 0, 5)
    # MNN links neighbouring keypoints with near-identical (1/8-resolution) descriptors now and
    # then, and such swaps add up along a track: measured 0.94 (LighterGlue) and 0.66 (MNN) at 256 keypoints.
    assert np.mean(err < 3.0) >= (0.85 if matcher == "lighterglue" else 0.55)


def test_frontend_reset_blank_and_resize(grays):
    fe = xf.XFeatFrontend(_cfg(xfeat_top_k=64, xfeat_matcher="mnn"))
    assert len(fe.track(np.zeros((H, W), np.uint8))) == 0
    t = fe.track(grays[0])
    assert len(t) == 64 and t.ids.min() == 0
    t = fe.track(grays[1])
    assert t.age.max() == 1
    # A new image size resets the tracks (ids restart, nothing continues).
    small = cv2.resize(grays[2], (W // 2, H // 2), interpolation=cv2.INTER_AREA)
    t = fe.track(small)
    assert np.all(t.age == 0) and t.ids.min() == 0
    assert np.all(t.px[:, 0] <= W // 2 - 1) and np.all(t.px[:, 1] <= H // 2 - 1)
    fe.reset()
    t = fe.track(grays[0])
    assert t.ids.min() == 0 and np.all(t.age == 0)
    with pytest.raises(ValueError):
        fe.track(np.zeros((H, W, 3), np.uint8))


# ----------------------------------------------------------------------------- measurements

def _measure(preset: str, width: int, height: int, n_frames: int = 11, **params) -> None:
    seq = render_sequence(preset, seed=0, n_frames=n_frames, width=width, height=height)
    gs = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in seq.rgb]
    fronts = {"xfeat": xf.XFeatFrontend(_cfg(**params)),
              "klt": klt.KLTFrontend(Config(validate(klt.PARAMS, {})))}
    for name, fe in fronts.items():
        fe.track(gs[0]), fe.track(gs[1]), fe.reset()             # warm-up
        tracks, det_ms, match_ms, total_ms = [], [], [], []
        for g in gs:
            t = time.perf_counter()
            tracks.append(fe.track(g))
            total_ms.append((time.perf_counter() - t) * 1e3)
            if name == "xfeat":
                det_ms.append(fe.last_timings["detect_ms"])
                match_ms.append(fe.last_timings["match_ms"])
        err = np.concatenate([track_errors(seq, tracks[i], tracks[i + 1], i, i + 1) for i in range(n_frames - 1)])
        t0 = tracks[0]
        surv = {k: int(np.isin(t0.ids, tracks[k].ids).sum()) for k in (5, 10)}
        ok = {k: int(np.sum(track_errors(seq, t0, tracks[k], 0, k) < 3.0)) for k in (5, 10)}
        timing = (f"detect {np.median(det_ms[1:]):.0f} ms, match {np.median(match_ms[1:]):.0f} ms"
                  if name == "xfeat" else f"track {np.median(total_ms[1:]):.0f} ms")
        print(f"{name:5s} {preset:5s} {width}x{height} {params}: {timing}; "
              f"{len(err) / (n_frames - 1):.0f} continued/frame, within 2 px {np.mean(err < 2):.3f}, "
              f"1 px {np.mean(err < 1):.3f}, >5 px {np.mean(err > 5):.3f}, median {np.median(err):.2f} px; "
              f"of {len(t0)} frame-0 tracks alive at 5/10: {surv[5]}/{surv[10]} "
              f"(within 3 px of GT: {ok[5]}/{ok[10]})")


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    print("torch threads", torch.get_num_threads())
    for preset in ("easy", "fast"):
        for (w, h, k) in ((320, 240, 512), (640, 480, 1024)):
            for matcher in ("lighterglue", "mnn"):
                _measure(preset, w, h, xfeat_top_k=k, xfeat_matcher=matcher)
