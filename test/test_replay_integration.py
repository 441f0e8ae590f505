"""Bag replay through the live node: sirenpose_replay (own process) -> node (own process) -> here."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_harness import IMAGE_TOPIC, INFO_TOPIC, RosSession  # noqa: E402
from sirenpose_ros.ros.messages import stamp_to_ns  # noqa: E402
from sirenpose_ros.synth.sequence import render_sequence, write_sequence  # noqa: E402

pytestmark = pytest.mark.ros


def test_bag_loop_resets_and_tracks_again(tmp_path):
    seq = render_sequence("easy", seed=1, n_frames=40, width=320, height=240, fps=30.0)
    write_sequence(seq, tmp_path / "seq", storage="mcap")
    s = RosSession(tmp_path, params={"diagnostics_period": 0.1, "use_sim_time": True,
                                         "extrinsics_source": "parameters"})
    try:
        s.wait_connected()
        r = subprocess.run(
            [sys.executable, "-m", "sirenpose_ros.tools.replay", str(tmp_path / "seq" / "bag"),
             "--rate", "0.1", "--loop", "2",
             "--remap", f"/camera/image_raw:={IMAGE_TOPIC}", f"/camera/camera_info:={INFO_TOPIC}"],
            env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        s.wait_for(lambda: int(s.rec.latest_diagnostics().get("time_jump_back", 0)) >= 1, 10,
                   "the bag loop to be detected")
        s.settle()
        first, last = int(seq.stamps_ns[0]), int(seq.stamps_ns[-1])
        stamps = [stamp_to_ns(m.header.stamp) for m in s.rec.odom]
        assert stamps, "no odometry at all"
        # Odometry went forward, jumped back at the loop, and went forward again.
        jumps = [i for i in range(1, len(stamps)) if stamps[i] < stamps[i - 1]]
        assert len(jumps) == 1, f"expected one backwards jump in output stamps, got {len(jumps)}"
        assert all(first <= t <= last for t in stamps)
        assert len(stamps) - jumps[0] >= 5, f"tracking did not resume after the loop: {len(stamps) - jumps[0]} poses"
        assert "bag loop" in s.node_log()
    finally:
        assert s.close() == 0
        if rclpy.ok():
            rclpy.shutdown()
