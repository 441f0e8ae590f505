"""rosbag2 reading (sirenpose_ros.io.bag) on tiny bags written here with `rosbags`, MCAP and sqlite3."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from sirenpose_ros.io.bag import read_camera_frames, read_messages, topics_of

TS = get_typestore(Stores.ROS2_KILTED)
IMG_T, CIMG_T, INFO_T = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
                         "sensor_msgs/msg/CameraInfo")
W, H = 8, 6
PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# Header stamps differ from the recording (receive) times on purpose: frames must carry the
# header stamp, BagMessage the receive time.
HEADER_OFFSET_NS = -5_000_000


def _header(stamp_ns: int, frame_id: str = "cam_optical"):
    sec, nsec = divmod(stamp_ns, 1_000_000_000)
    return TS.types["std_msgs/msg/Header"](
        stamp=TS.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id)


def _info(stamp_ns: int, fx: float):
    K = np.array([fx, 0, (W - 1) / 2, 0, fx, (H - 1) / 2, 0, 0, 1], np.float64)
    P = np.zeros(12)
    P[[0, 2, 5, 6, 10]] = K[[0, 2, 4, 5, 8]]
    Roi = TS.types["sensor_msgs/msg/RegionOfInterest"]
    return TS.types[INFO_T](header=_header(stamp_ns), height=H, width=W,
                            distortion_model="plumb_bob", d=np.zeros(5), k=K,
                            r=np.eye(3).reshape(-1), p=P, binning_x=0, binning_y=0,
                            roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _rgb(i: int) -> np.ndarray:
    """A frame whose every pixel differs and which encodes its index."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[0, 0] = (i, 255 - i, 7)
    return img


def _image_msg(stamp_ns: int, rgb: np.ndarray, compressed: bool):
    if compressed:   # PNG: lossless, so decoded pixels can be compared exactly
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        return TS.types[CIMG_T](header=_header(stamp_ns), format="png", data=png.reshape(-1))
    return TS.types[IMG_T](header=_header(stamp_ns), height=H, width=W, encoding="rgb8",
                           is_bigendian=0, step=3 * W, data=rgb.reshape(-1))


# Recording plan: (receive time ns, what). One image before the first CameraInfo, a change of
# intrinsics half-way, and a /other topic that must not leak into the camera stream.
T0 = 1_700_000_000_000_000_000
PLAN = [
    (T0 + 0, "image", 0),
    (T0 + 10, "info", 500.0),
    (T0 + 20, "image", 1),
    (T0 + 25, "other", None),
    (T0 + 30, "image", 2),
    (T0 + 40, "info", 600.0),
    (T0 + 50, "image", 3),
    (T0 + 60, "image", 4),
]


def write_bag(path: Path, storage: str, compressed: bool) -> Path:
    img_t = CIMG_T if compressed else IMG_T
    with Writer(path, version=9, storage_plugin=PLUGINS[storage]) as w:
        c_img = w.add_connection("/cam/image", img_t, typestore=TS)
        c_info = w.add_connection("/cam/camera_info", INFO_T, typestore=TS)
        c_other = w.add_connection("/other", "std_msgs/msg/String", typestore=TS)
        for t, what, arg in PLAN:
            if what == "image":
                w.write(c_img, t, TS.serialize_cdr(
                    _image_msg(t + HEADER_OFFSET_NS, _rgb(arg), compressed), img_t))
            elif what == "info":
                w.write(c_info, t, TS.serialize_cdr(_info(t, arg), INFO_T))
            else:
                w.write(c_other, t, TS.serialize_cdr(
                    TS.types["std_msgs/msg/String"](data="x"), "std_msgs/msg/String"))
    return path


@pytest.fixture(params=[("mcap", False), ("sqlite3", False), ("mcap", True), ("sqlite3", True)],
                ids=["mcap-raw", "sqlite3-raw", "mcap-png", "sqlite3-png"])
def bag(request, tmp_path):
    storage, compressed = request.param
    return write_bag(tmp_path / "bag", storage, compressed), compressed


def test_topics_of(bag):
    path, compressed = bag
    assert topics_of(path) == {"/cam/image": CIMG_T if compressed else IMG_T,
                               "/cam/camera_info": INFO_T, "/other": "std_msgs/msg/String"}


def test_read_messages_in_recording_order_with_receive_times(bag):
    path, _ = bag
    msgs = list(read_messages(path))
    assert [m.t_ns for m in msgs] == [t for t, _, _ in PLAN]
    want_topic = {"image": "/cam/image", "info": "/cam/camera_info", "other": "/other"}
    assert [m.topic for m in msgs] == [want_topic[w] for _, w, _ in PLAN]
    # raw is the CDR payload: it deserialises back to what was written.
    info = TS.deserialize_cdr(msgs[1].raw, msgs[1].msgtype)
    assert info.k[0] == 500.0 and info.width == W


def test_read_messages_topic_filter_and_missing_topic(bag):
    path, _ = bag
    msgs = list(read_messages(path, ["/cam/camera_info"]))
    assert [m.t_ns for m in msgs] == [T0 + 10, T0 + 40]
    with pytest.raises(KeyError, match="/nope"):
        list(read_messages(path, ["/cam/image", "/nope"]))


def test_read_camera_frames_pairs_latest_info_and_decodes(bag):
    path, _ = bag
    frames = list(read_camera_frames(path, "/cam/image", "/cam/camera_info"))
    # Image 0 came before any CameraInfo: skipped.
    assert len(frames) == 4
    idx = [1, 2, 3, 4]
    recv = [t for t, w, _ in PLAN if w == "image"][1:]
    assert [f.stamp_ns for f in frames] == [t + HEADER_OFFSET_NS for t in recv]
    for f, i in zip(frames, idx):
        assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
        np.testing.assert_array_equal(f.rgb, _rgb(i))
        np.testing.assert_array_equal(f.gray, cv2.cvtColor(_rgb(i), cv2.COLOR_RGB2GRAY))
        assert f.frame_id == "cam_optical"
    # Intrinsics: the newest CameraInfo before each image.
    assert [f.camera.fx for f in frames] == [500.0, 500.0, 600.0, 600.0]
    assert (frames[0].camera.width, frames[0].camera.height) == (W, H)


def test_read_camera_frames_missing_topic_raises(bag):
    path, _ = bag
    with pytest.raises(KeyError, match="/cam/nothing"):
        next(read_camera_frames(path, "/cam/nothing", "/cam/camera_info"))
    with pytest.raises(KeyError, match="/cam/info_missing"):
        next(read_camera_frames(path, "/cam/image", "/cam/info_missing"))
