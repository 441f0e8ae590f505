"""Reading rosbag2 recordings (MCAP or sqlite3) without ROS, through the pure-Python `rosbags`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.image import decode_compressed, decode_image

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    t_ns: int            # recording (receive) time
    raw: bytes           # CDR bytes, publishable as is


def read_messages(path: str | Path, topics: list[str] | None = None) -> Iterator[BagMessage]:
    """All messages in recording order; ``topics`` restricts to those (missing topics raise)."""
    with Reader(Path(path)) as reader:
        conns = reader.connections
        if topics is not None:
            known = {c.topic for c in conns}
            missing = [t for t in topics if t not in known]
            if missing:
                raise KeyError(f"topic(s) {missing} not in bag {path}; it has {sorted(known)}")
            conns = [c for c in conns if c.topic in topics]
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, int(t_ns), bytes(raw))


def topics_of(path: str | Path) -> dict[str, str]:
    """topic -> message type."""
    with Reader(Path(path)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


@dataclass
class BagFrame:
    stamp_ns: int
    gray: object
    rgb: object
    camera: CameraModel
    frame_id: str


def read_camera_frames(path: str | Path, image_topic: str, info_topic: str,
                       significant_bits: int = 16) -> Iterator[BagFrame]:
    """Decoded frames paired with the newest CameraInfo seen before them (as the live node does).

    Frames before the first CameraInfo are skipped; decoding errors propagate (offline tools
    should fail loudly on a broken bag). ``significant_bits``: as the node's
    ``image_16bit_significant_bits`` (16-bit raw images only).
    """
    camera = None
    for m in read_messages(path, [image_topic, info_topic]):
        msg = TYPESTORE.deserialize_cdr(m.raw, m.msgtype)
        if m.topic == info_topic:
            camera = CameraModel.from_camera_info(int(msg.width), int(msg.height), list(msg.k),
                                                  list(msg.d), msg.distortion_model)
            continue
        if camera is None:
            continue
        if m.msgtype == "sensor_msgs/msg/CompressedImage":
            gray, rgb = decode_compressed(msg.format, msg.data)
        else:
            gray, rgb = decode_image(msg.encoding, int(msg.width), int(msg.height), int(msg.step),
                                     msg.data, bool(msg.is_bigendian),
                                     significant_bits=significant_bits)
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        yield BagFrame(stamp, gray, rgb, camera, msg.header.frame_id)
