"""Rendered sequences with exact ground truth, and their on-disk form.

On disk (``out_dir``):
- ``bag/``: rosbag2 (MCAP or sqlite3) with ``<prefix>/image_raw`` (sensor_msgs/Image, rgb8) and
  ``<prefix>/camera_info`` (sensor_msgs/CameraInfo, plumb_bob, zero distortion), both stamped
  with the frame stamp, bag receive time = stamp. The RGB frames live only here.
- ``groundtruth.tum``: T_world_cam per frame (TUM format, exact stamps, round-trip floats).
- ``gt.npz``: depth (N, H, W) float32 metres, mask (N, H, W) uint8, stamps_ns, K, T_world_cam.
- ``meta.json``: preset, seed, sizes, fps, trajectory length, median depth, moving-pixel share.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.tum import read_tum, write_tum
from .presets import preset as make_preset
from .render import Renderer, default_intrinsics
from .scene import check_scene

START_NS = 1_000_000_000
FRAME_ID = "camera_optical_frame"


@dataclass
class Sequence:
    K: np.ndarray                    # (3, 3)
    width: int
    height: int
    fps: float
    stamps_ns: np.ndarray            # (N,) int64
    T_world_cam: np.ndarray          # (N, 4, 4) optical frame -> world
    rgb: np.ndarray                  # (N, H, W, 3) uint8
    depth: np.ndarray                # (N, H, W) float32, metres along the optical axis
    mask: np.ndarray                 # (N, H, W) uint8, 0 static, k = moving object k
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.stamps_ns.shape[0])


def frame_stamps(n_frames: int, fps: float) -> np.ndarray:
    """Stamps in int ns: START_NS + round(i * 1e9 / fps) (no float drift over long sequences)."""
    return START_NS + np.round(np.arange(n_frames) * (1e9 / fps)).astype(np.int64)


def sequence_stats(T_world_cam: np.ndarray, depth: np.ndarray, mask: np.ndarray) -> dict:
    steps = np.linalg.norm(np.diff(T_world_cam[:, :3, 3], axis=0), axis=1)
    share = (mask > 0).reshape(mask.shape[0], -1).mean(axis=1)
    return {
        "trajectory_length_m": float(steps.sum()),
        "median_depth_m": float(np.median(depth)),
        "moving_pixel_share_mean": float(share.mean()),
        "moving_pixel_share_min": float(share.min()),
        "moving_pixel_share_max": float(share.max()),
    }


def render_sequence(preset: str, seed: int = 0, n_frames: int = 60, width: int = 320,
                    height: int = 240, fps: float = 30.0) -> Sequence:
    """Render ``n_frames`` of a preset at ``fps``; the scene time of frame i is i / fps."""
    if n_frames < 1 or width < 2 or height < 2 or not fps > 0:
        raise ValueError("need n_frames >= 1, width/height >= 2 and fps > 0")
    spec = make_preset(preset, seed)
    stamps = frame_stamps(n_frames, fps)
    times = (stamps - START_NS) / 1e9
    problems = check_scene(spec, times)
    if problems:        # a preset bug: the ground truth would describe an impossible scene
        raise RuntimeError(f"preset {preset!r} seed {seed}: " + "; ".join(problems))
    renderer = Renderer(spec, width, height, default_intrinsics(width, height))
    T = spec.camera_poses(times)
    rgb = np.empty((n_frames, height, width, 3), np.uint8)
    depth = np.empty((n_frames, height, width), np.float32)
    mask = np.empty((n_frames, height, width), np.uint8)
    for i, t in enumerate(times):
        f = renderer.render(float(t), T[i])
        rgb[i], depth[i], mask[i] = f.rgb, f.depth, f.mask
    meta = {"preset": preset, "seed": int(seed), "n_frames": int(n_frames), "width": int(width),
            "height": int(height), "fps": float(fps), "n_objects": len(spec.objects),
            "objects": [o.name for o in spec.objects], "texture": spec.texture,
            "world_frame": "x along the room, y left, z up (metres)"}
    meta.update(sequence_stats(T, depth, mask))
    return Sequence(renderer.K.copy(), width, height, float(fps), stamps, T, rgb, depth, mask, meta)


# ---------------------------------------------------------------------------------------------
# rosbag2
# ---------------------------------------------------------------------------------------------

def _typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_KILTED)


def _header(ts, stamp_ns: int):
    Time, Header = ts.types["builtin_interfaces/msg/Time"], ts.types["std_msgs/msg/Header"]
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=FRAME_ID)


def camera_info_msg(ts, K: np.ndarray, width: int, height: int, stamp_ns: int):
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(header=_header(ts, stamp_ns), height=height, width=width,
                      distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1).astype(np.float64),
                      r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0,
                      roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_bag(seq: Sequence, bag_dir: str | Path, storage: str = "mcap",
              topic_prefix: str = "/camera") -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    ts = _typestore()
    Image = ts.types["sensor_msgs/msg/Image"]
    img_t, info_t = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"
    with Writer(Path(bag_dir), version=9, storage_plugin=plugins[storage]) as writer:
        c_img = writer.add_connection(f"{topic_prefix}/image_raw", img_t, typestore=ts)
        c_info = writer.add_connection(f"{topic_prefix}/camera_info", info_t, typestore=ts)
        for i, stamp in enumerate(seq.stamps_ns.tolist()):
            # CameraInfo first, as camera drivers do, so the first image already has its
            # intrinsics when replayed or read.
            info = camera_info_msg(ts, seq.K, seq.width, seq.height, stamp)
            writer.write(c_info, stamp, ts.serialize_cdr(info, info_t))
            img = Image(header=_header(ts, stamp), height=seq.height, width=seq.width,
                        encoding="rgb8", is_bigendian=0, step=3 * seq.width,
                        data=seq.rgb[i].reshape(-1))
            writer.write(c_img, stamp, ts.serialize_cdr(img, img_t))


def read_bag_images(bag_dir: str | Path, topic: str = "/camera/image_raw"):
    """-> (stamps_ns (N,) from the headers, rgb (N, H, W, 3) uint8), in bag order."""
    from rosbags.rosbag2 import Reader
    ts = _typestore()
    stamps, frames = [], []
    with Reader(Path(bag_dir)) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise ValueError(f"{bag_dir}: no topic {topic}")
        for conn, _, raw in reader.messages(connections=conns):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            if msg.encoding != "rgb8":
                raise ValueError(f"{bag_dir}: expected rgb8 images, got {msg.encoding}")
            rows = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)
            frames.append(rows[:, :3 * msg.width].reshape(msg.height, msg.width, 3))
            stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
    return np.array(stamps, np.int64), np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


# ---------------------------------------------------------------------------------------------
# Directory form
# ---------------------------------------------------------------------------------------------

def write_sequence(seq: Sequence, out_dir: str | Path, storage: str = "mcap",
                   topic_prefix: str = "/camera") -> Path:
    """Write bag/, groundtruth.tum, gt.npz and meta.json under out_dir (bag/ is replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bag = out / "bag"
    if bag.exists():      # rosbags refuses to write into an existing directory
        shutil.rmtree(bag)
    write_bag(seq, bag, storage, topic_prefix)
    write_tum(out / "groundtruth.tum", seq.stamps_ns, seq.T_world_cam)
    np.savez_compressed(out / "gt.npz", depth=seq.depth, mask=seq.mask, stamps_ns=seq.stamps_ns,
                        K=seq.K, T_world_cam=seq.T_world_cam)
    meta = dict(seq.meta, storage=storage, topic_prefix=topic_prefix,
                image_topic=f"{topic_prefix}/image_raw", info_topic=f"{topic_prefix}/camera_info",
                frame_id=FRAME_ID)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_sequence(out_dir: str | Path, with_rgb: bool = True) -> Sequence:
    """Read a directory written by write_sequence (rgb from the bag unless with_rgb=False)."""
    out = Path(out_dir)
    meta = json.loads((out / "meta.json").read_text())
    with np.load(out / "gt.npz") as z:
        depth, mask, stamps = z["depth"], z["mask"], z["stamps_ns"]
        K, T = z["K"], z["T_world_cam"]
    n, h, w = depth.shape
    if with_rgb:
        bag_stamps, rgb = read_bag_images(out / "bag", meta.get("image_topic", "/camera/image_raw"))
        if not np.array_equal(bag_stamps, stamps):
            raise ValueError(f"{out}: bag image stamps do not match gt.npz")
    else:
        rgb = np.zeros((n, h, w, 3), np.uint8)[:0]
    return Sequence(K, w, h, float(meta["fps"]), stamps, T, rgb, depth, mask, meta)


def load_groundtruth_tum(out_dir: str | Path):
    """(stamps_ns, T_world_cam) from groundtruth.tum (the file evaluation tools read)."""
    return read_tum(Path(out_dir) / "groundtruth.tum")
