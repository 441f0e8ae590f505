"""A short run of sirenpose_soak (the real console entry point, in its own process): the node
survives, processes frames, and the outputs are well-formed. Timing and memory are benchmarks
(docs/robustness.md), not asserted here."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros


def test_short_soak_writes_consistent_outputs(tmp_path):
    out = tmp_path / "soak"
    r = subprocess.run(
        [sys.executable, "-m", "sirenpose_ros.tools.soak", "--duration", "8", "--rate", "15",
         "--width", "160", "--height", "120", "--frames", "20", "--out", str(out),
         "--param", "field_enabled:=false"],
        env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RSS after warm-up" in r.stdout and "crashes: none" in r.stdout, r.stdout

    s = json.loads((out / "soak.json").read_text())
    assert s["crashed"] is False and s["node_exit_code"] == 0
    assert s["frames_sent"] >= 100                    # 8 s at 15 Hz, minus scheduling slack
    assert 0 < s["frames_processed"] <= s["frames_received"] <= s["frames_sent"]
    assert s["frames_dropped_in_node"] + s["frames_processed"] <= s["frames_received"] + 1
    assert s["pipeline_errors"] == 0 and s["params"] == {"field_enabled": "false"}
    assert 0 < s["rss_mb_min"] <= s["rss_mb_after_warmup"] <= s["rss_mb_max"]
    assert isinstance(s["rss_growth_after_warmup_percent"], float)

    with open(out / "soak.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 8 and len(rows) == s["samples"]
    t = [float(row["t_s"]) for row in rows]
    assert t == sorted(t) and t[-1] >= 8.0
    sent = [int(row["frames_sent"]) for row in rows]
    assert sent == sorted(sent) and sent[-1] == s["frames_sent"]
    assert all(float(row["node_rss_mb"]) > 50 for row in rows)
    assert int(rows[-1]["frames_processed"]) == s["frames_processed"]
    assert int(rows[-1]["node_threads"]) > 1 and int(rows[-1]["node_fds"]) > 0

    png = (out / "soak.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "sirenpose ready" in (out / "node.log").read_text()


def test_soak_refuses_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "sirenpose_ros.tools.soak", "--duration", "0"],
                       env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--duration" in r.stderr
