"""Synthetic sequences: determinism, exact depth/mask ground truth, presets, bag and TUM output."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sirenpose_ros.io.tum import read_tum
from sirenpose_ros.synth.presets import PRESETS, preset
from sirenpose_ros.synth.render import Renderer
from sirenpose_ros.synth.scene import check_scene, point_box_distance
from sirenpose_ros.synth.sequence import load_sequence, render_sequence, write_sequence
from sirenpose_ros.tools.synth import main as synth_main

W, H = 160, 120


@pytest.fixture(scope="module")
def multi():
    return render_sequence("multi_object", seed=1, n_frames=4, width=W, height=H)


def _backproject(seq, i):
    """World points (H*W, 3) of every pixel of frame i from depth, K and T_world_cam."""
    u, v = np.meshgrid(np.arange(seq.width), np.arange(seq.height))
    rays = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    X_cam = (np.linalg.inv(seq.K) @ rays) * seq.depth[i].ravel().astype(np.float64)
    T = seq.T_world_cam[i]
    return (T[:3, :3] @ X_cam).T + T[:3, 3]


def _reference_cast(spec, T_wc, t, dirs_cam):
    """Independent ray caster (plane + inside-rectangle test per face, not the slab test):
    -> (depth (N,), object id (N,), 0 = static)."""
    o, D = T_wc[:3, 3], dirs_cam @ T_wc[:3, :3].T
    best = np.full(len(D), np.inf)
    who = np.full(len(D), -1)
    boxes = [((spec.room_lo + spec.room_hi) / 2, np.eye(3), (spec.room_hi - spec.room_lo) / 2, 0)]
    boxes += [(b.motion.pose(t)[:3, 3], b.motion.pose(t)[:3, :3], b.half, 0) for b in spec.static_boxes]
    boxes += [(b.motion.pose(t)[:3, 3], b.motion.pose(t)[:3, :3], b.half, k + 1)
              for k, b in enumerate(spec.objects)]
    with np.errstate(divide="ignore", invalid="ignore"):
        for c, R, h, oid in boxes:
            ol, Dl = R.T @ (o - c), D @ R
            for a in range(3):
                for sgn in (-1.0, 1.0):
                    tt = (sgn * h[a] - ol[a]) / Dl[:, a]
                    p = ol + tt[:, None] * Dl
                    others = [b for b in range(3) if b != a]
                    inside = np.all(np.abs(p[:, others]) <= h[others] + 1e-9, axis=1)
                    ok = inside & (tt > 1e-9) & (tt < best)
                    best[ok], who[ok] = tt[ok], oid
    return best, who


def test_determinism_same_seed_identical_other_seed_different(multi):
    again = render_sequence("multi_object", seed=1, n_frames=4, width=W, height=H)
    for name in ("rgb", "depth", "mask", "T_world_cam", "stamps_ns", "K"):
        assert np.array_equal(getattr(multi, name), getattr(again, name)), name
    other = render_sequence("multi_object", seed=2, n_frames=4, width=W, height=H)
    assert not np.array_equal(other.rgb, multi.rgb)
    assert not np.allclose(other.T_world_cam, multi.T_world_cam)
    assert multi.rgb.dtype == np.uint8 and multi.rgb.shape == (4, H, W, 3)
    assert multi.depth.dtype == np.float32 and multi.mask.dtype == np.uint8
    assert np.all(np.diff(multi.stamps_ns) == 33_333_333) or np.all(
        np.abs(np.diff(multi.stamps_ns) - 1e9 / 30) <= 1)
    assert multi.stamps_ns[0] == 1_000_000_000


def test_depth_backprojects_onto_the_surface_it_should(multi):
    spec = preset("multi_object", 1)
    for i in (0, 3):
        t = (multi.stamps_ns[i] - multi.stamps_ns[0]) / 1e9
        X = _backproject(multi, i)
        mask = multi.mask[i].ravel()
        assert np.isfinite(X).all()
        static = mask == 0
        # Static pixels: on a room plane or on a static box.
        room = np.minimum(X - spec.room_lo, spec.room_hi - X)
        dist = np.abs(room).min(axis=1)
        assert np.all(room.min(axis=1) > -1e-4)                      # inside the room
        for b in spec.static_boxes:
            dist = np.minimum(dist, np.abs(point_box_distance(X, b.motion.pose(t), b.half)))
        assert dist[static].max() < 1e-4
        # Moving pixels: on the surface of their own object at that time.
        assert (~static).sum() > 50
        for k, o in enumerate(spec.objects, start=1):
            sel = mask == k
            if sel.any():
                d = point_box_distance(X[sel], o.motion.pose(t), o.half)
                assert np.abs(d).max() < 1e-4, (k, np.abs(d).max())


def test_depth_and_mask_match_an_independent_ray_caster():
    """The mask marks exactly the pixels whose ray hits a moving object, and depth is that hit."""
    for name, times in (("multi_object", (0.0, 1.3)), ("close_object", (1.0,)), ("large_dynamic", (0.5,))):
        spec = preset(name, 0)
        r = Renderer(spec, W, H)
        for t in times:
            T = spec.camera_poses(t)
            f = r.render(t, T)
            depth, who = _reference_cast(spec, T, t, r.dirs_cam_T.T)
            assert np.all(who >= 0)                                   # no holes
            assert np.array_equal(who.reshape(H, W), f.mask.astype(int)), (name, t)
            assert np.abs(depth.reshape(H, W) - f.depth).max() < 1e-5 * depth.max()
            assert (f.mask > 0).any()


def test_depth_reprojects_consistently_into_another_frame():
    """Surface points of frame j, moved to time i (static: unchanged; object k: by its own
    motion), are seen from camera i exactly at their depth unless something occludes them."""
    spec = preset("easy", 0)
    seq = render_sequence("easy", seed=0, n_frames=8, width=W, height=H)
    r = Renderer(spec, W, H)
    j, i = 0, 7
    tj, ti = j / seq.fps, i / seq.fps
    X = _backproject(seq, j)
    mask = seq.mask[j].ravel()
    for k, o in enumerate(spec.objects, start=1):      # carry object points along their motion
        sel = mask == k
        M = o.motion.pose(ti) @ np.linalg.inv(o.motion.pose(tj))
        X[sel] = X[sel] @ M[:3, :3].T + M[:3, 3]
    Ti = seq.T_world_cam[i]
    Xc = (X - Ti[:3, 3]) @ Ti[:3, :3]
    uv = (seq.K @ (Xc / Xc[:, 2:3]).T).T
    inview = (Xc[:, 2] > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1)
    depth, *_ = r.cast(Ti, ti, (Xc[inview] / Xc[inview, 2:3]).T)
    z = Xc[inview, 2]
    err = depth - z
    assert inview.mean() > 0.7
    assert np.all(err < 1e-4)                         # never deeper than the surface point itself
    assert np.mean(np.abs(err) < 1e-4) > 0.9          # and exactly there unless occluded
    assert np.any(mask > 0) and np.all(np.abs(err[(mask > 0)[inview]]) < 1e-4)


def test_klt_tracks_static_corners_to_ground_truth_flow():
    """Textures are trackable and brightness-constant: GFTT + KLT agree with the exact flow."""
    import cv2
    seq = render_sequence("easy", seed=0, n_frames=3, width=320, height=240)
    g0, g1 = (cv2.cvtColor(seq.rgb[i], cv2.COLOR_RGB2GRAY) for i in (0, 2))
    p0 = cv2.goodFeaturesToTrack(g0, 400, 0.01, 7)[:, 0].astype(np.float64)
    assert len(p0) >= 300
    p1, st, _ = cv2.calcOpticalFlowPyrLK(g0, g1, p0.astype(np.float32), None, winSize=(21, 21),
                                         maxLevel=3)
    u, v = np.round(p0).astype(int).T
    # Exact flow of the pixel centre nearest to each corner, plus the sub-pixel offset.
    X = (np.linalg.inv(seq.K) @ np.stack([u, v, np.ones_like(u)])) * seq.depth[0][v, u]
    Xw = seq.T_world_cam[0][:3, :3] @ X + seq.T_world_cam[0][:3, 3:]
    T2 = seq.T_world_cam[2]
    q = seq.K @ (T2[:3, :3].T @ (Xw - T2[:3, 3:]))
    expected = (q[:2] / q[2]).T + (p0 - np.stack([u, v], 1))
    ok = (st[:, 0] == 1) & (seq.mask[0][v, u] == 0)
    err = np.linalg.norm(p1[ok] - expected[ok], axis=1)
    assert ok.mean() > 0.8 and np.median(err) < 0.1 and np.mean(err < 0.5) > 0.9


def test_moving_pixel_share_of_presets():
    big = render_sequence("large_dynamic", seed=0, n_frames=60, width=W, height=H)
    easy = render_sequence("easy", seed=0, n_frames=60, width=W, height=H)
    share_big = (big.mask > 0).reshape(60, -1).mean(axis=1)
    share_easy = (easy.mask > 0).reshape(60, -1).mean(axis=1)
    assert share_big.mean() >= 0.3 and np.mean(share_big >= 0.3) > 0.5
    assert share_big.max() < 0.75                     # static background stays visible
    assert share_easy.mean() < 0.1 and share_easy.min() > 0   # object visible throughout
    assert big.meta["moving_pixel_share_mean"] == pytest.approx(share_big.mean())
    assert easy.meta["trajectory_length_m"] > 0.3


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_physical_and_move_as_described(name):
    for seed in (0, 1, 2):
        spec = preset(name, seed)
        times = np.arange(1800) / 30.0                # one minute at 30 fps
        assert check_scene(spec, times) == []
        T = spec.camera_poses(times)
        p = T[:, :3, 3]
        forward = T[:, :3, 2]                         # optical axis in the world
        assert np.all(forward[:, 0] > 0.7)            # looking roughly along +x (the room)
        acc = np.linalg.norm(np.diff(p, 2, axis=0), axis=1) * 30.0 ** 2
        assert acc.max() < 30.0                       # smooth: bounded acceleration (m/s^2)
        baseline = np.linalg.norm(p[9] - p[0])
        if name == "still":
            assert np.linalg.norm(p - p[0], axis=1).max() < 0.03
        else:
            assert baseline > 0.03, baseline          # parallax for initialisation in 10 frames
    speed = lambda n: np.linalg.norm(np.diff(preset(n, 0).camera_poses(np.arange(60) / 30.0)[:, :3, 3],
                                             axis=0), axis=1).mean() * 30
    if name == "fast":
        assert speed("fast") > 3 * speed("easy")
    if name == "multi_object":
        assert len(preset(name, 0).objects) >= 3


def test_bag_round_trip_mcap_and_load(multi, tmp_path):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    out = write_sequence(multi, tmp_path / "seq", storage="mcap")
    assert list((out / "bag").glob("*.mcap"))
    ts = get_typestore(Stores.ROS2_KILTED)
    images, infos = [], []
    with Reader(out / "bag") as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics == {"/camera/image_raw": "sensor_msgs/msg/Image",
                          "/camera/camera_info": "sensor_msgs/msg/CameraInfo"}
        for conn, t_ns, raw in reader.messages():
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert stamp == t_ns and msg.header.frame_id == "camera_optical_frame"
            (images if conn.topic.endswith("image_raw") else infos).append((stamp, msg))
    assert [s for s, _ in images] == multi.stamps_ns.tolist()
    assert [s for s, _ in infos] == multi.stamps_ns.tolist()
    for (_, img), rgb in zip(images, multi.rgb):
        assert (img.encoding, img.width, img.height, img.step) == ("rgb8", W, H, 3 * W)
        assert bytes(img.data) == rgb.tobytes()
    info = infos[0][1]
    assert np.array_equal(info.k.reshape(3, 3), multi.K)
    assert info.distortion_model == "plumb_bob" and not np.any(info.d)
    assert np.array_equal(info.p.reshape(3, 4)[:, :3], multi.K)

    back = load_sequence(out)
    for name in ("rgb", "depth", "mask", "T_world_cam", "stamps_ns", "K"):
        assert np.array_equal(getattr(back, name), getattr(multi, name)), name
    meta = json.loads((out / "meta.json").read_text())
    assert meta["preset"] == "multi_object" and meta["seed"] == 1


def test_tum_round_trip_and_sqlite3(multi, tmp_path):
    out = write_sequence(multi, tmp_path / "seq", storage="sqlite3", topic_prefix="/cam0")
    stamps, T = read_tum(out / "groundtruth.tum")
    assert np.array_equal(stamps, multi.stamps_ns)
    assert np.abs(T - multi.T_world_cam).max() < 1e-12
    assert list((out / "bag").glob("*.db3"))
    assert np.array_equal(load_sequence(out).rgb, multi.rgb)


def test_cli_writes_a_sequence(tmp_path, capsys):
    assert synth_main(["--preset", "still", "--frames", "3", "--width", "64", "--height", "48",
                       "--out", str(tmp_path / "s")]) == 0
    line = capsys.readouterr().out.strip()
    assert "3 frames" in line and "moving pixels" in line
    assert Path(tmp_path / "s" / "gt.npz").exists()
    assert load_sequence(tmp_path / "s").rgb.shape == (3, 48, 64, 3)
