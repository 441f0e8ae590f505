"""Play a rosbag2 (MCAP or sqlite3) into live topics, with /clock, at a chosen rate.

Messages are published as their recorded CDR bytes (no deserialisation), stamped in time by the
recording's receive times; /clock follows the bag time so that nodes with use_sim_time run on it.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from sirenpose_ros.io.bag import read_messages, topics_of
from sirenpose_ros.ros.dds import confine_this_process


def message_class(msgtype: str):
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="sirenpose_replay", description=__doc__)
    ap.add_argument("bag", help="rosbag2 folder (or .mcap / .db3 file's folder)")
    ap.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    ap.add_argument("--loop", type=int, default=1, help="play the bag this many times (bag loop)")
    ap.add_argument("--topics", nargs="*", default=None, help="only these topics")
    ap.add_argument("--remap", nargs="*", default=[], metavar="FROM:=TO", help="topic remaps")
    ap.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    ap.add_argument("--wait-subscribers", type=float, default=10.0,
                    help="seconds to wait for a subscriber on every image topic before playing")
    ap.add_argument("--start-delay", type=float, default=0.0, help="seconds to wait before playing")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID to use")
    ap.add_argument("--network", action="store_true",
                    help="allow DDS discovery beyond this host (default: localhost only)")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.loop < 1:
        ap.error("--rate must be > 0 and --loop >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.network:
        confine_this_process(args.domain_id)
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
    from rosgraph_msgs.msg import Clock

    remap = dict(r.split(":=", 1) for r in args.remap)
    types = topics_of(args.bag)
    topics = args.topics or sorted(types)
    rclpy.init()
    node = rclpy.create_node("sirenpose_replay")
    qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)
    pubs = {t: node.create_publisher(message_class(types[t]), remap.get(t, t), qos) for t in topics}
    clock_pub = None if args.no_clock else node.create_publisher(Clock, "/clock", qos)
    log = node.get_logger()
    try:
        deadline = time.monotonic() + args.wait_subscribers
        image_pubs = [p for t, p in pubs.items() if "Image" in types[t]]
        while image_pubs and time.monotonic() < deadline and not all(
                p.get_subscription_count() for p in image_pubs):
            time.sleep(0.05)
        time.sleep(args.start_delay)
        n = 0
        for loop in range(args.loop):
            t_first, wall0 = None, time.monotonic()
            for m in read_messages(args.bag, topics):
                if t_first is None:
                    t_first = m.t_ns
                wait = wall0 + (m.t_ns - t_first) / 1e9 / args.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if clock_pub is not None:
                    clock_pub.publish(Clock(clock=_time_msg(m.t_ns)))
                pubs[m.topic].publish(m.raw)
                n += 1
            log.info(f"loop {loop + 1}/{args.loop} done")
        log.info(f"replayed {n} messages from {args.bag}")
        time.sleep(0.2)  # let reliable writers flush the last samples
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _time_msg(ns: int):
    from builtin_interfaces.msg import Time
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


if __name__ == "__main__":
    sys.exit(main())
