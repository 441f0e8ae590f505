"""Plumbing of the speed benchmark (sirenpose_ros/tools/benchmark.py) on a tiny sequence.

No timing is asserted: only that the tool measures every frame and stage it claims to, writes
the JSON it documents and renders tables from it.
"""
import json

import numpy as np
import pytest

from sirenpose_ros.core.types import Cloud
from sirenpose_ros.tools import benchmark as B

SIZE = (96, 72)
FRAMES, WARMUP = 14, 4


@pytest.fixture(scope="module")
def run_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = B.main(["--size", f"{SIZE[0]}x{SIZE[1]}", "--frames", str(FRAMES), "--warmup", str(WARMUP),
                 "--render-frames", "8", "--render-workers", "1", "--cache-dir", str(out / "cache"),
                 "--param", "window_init_min_parallax_deg:=0.5", "--label", "tiny",
                 "--json", str(out / "b.json"), "--markdown", str(out / "b.md")])
    assert rc == 0
    return out, json.loads((out / "b.json").read_text())


def test_json_has_documented_keys(run_doc):
    out, doc = run_doc
    assert {"command", "commit", "date", "host", "runs"} <= set(doc)
    assert doc["command"].startswith("sirenpose_benchmark --size 96x72")
    (run,) = doc["runs"]
    assert run["mode"] == "pipeline" and run["label"] == "tiny" and run["size"] == "96x72"
    assert run["measured"] == FRAMES - WARMUP and run["frames"] == FRAMES
    assert run["params"] == {"window_init_min_parallax_deg": 0.5}
    assert run["fps"] > 0 and run["wall_s"] > 0
    for key in ("decode", "frontend", "window", "publish_tf", "publish_cloud", "other"):
        s = run["stages_ms"][key]
        assert s["n"] == FRAMES - WARMUP and 0 <= s["p50"] <= s["p99"] <= s["max"], key
    # The pose latency of a frame is a part of its wall time; stages add up to the wall time.
    assert run["latency_ms"]["pose"]["p50"] <= run["frame_ms"]["max"] + 1e-6
    total = sum(s["mean"] for s in run["stages_ms"].values())
    assert total == pytest.approx(run["frame_ms"]["mean"], rel=0.05, abs=0.05)
    mem = run["memory"]
    assert mem["peak_rss_mb"] >= mem["rss_start_mb"] > 0
    assert mem["input_frames_mb"] == pytest.approx(8 * SIZE[0] * SIZE[1] * 3 / 2**20)
    tr = run["tracking"]
    assert 0.0 <= tr["tracked_share"] <= 1.0
    assert len(tr["poses"]["stamps_ns"]) == len(tr["poses"]["T"]) == tr["n_poses"]
    assert (out / "cache" / f"easy_s0_{SIZE[0]}x{SIZE[1]}_8f.npz").is_file()


def test_markdown_table_from_json(run_doc):
    out, doc = run_doc
    text = (out / "b.md").read_text()
    assert "| tiny | 96x72 | 10 |" in text
    header = next(line for line in text.splitlines() if line.startswith("| run | size | decode"))
    for key in ("frontend", "window", "publish_tf", "publish_cloud"):
        assert key in header
    assert "MASt3R-SLAM 15 FPS" in text and "not measured here" in text
    # report mode renders the same tables from the JSON file.
    assert B.main(["--mode", "report", str(out / "b.json"), "--markdown", str(out / "r.md")]) == 0
    assert (out / "r.md").read_text() == text


def test_cached_frames_are_reused(run_doc):
    out, _ = run_doc
    seq = B.cached_frames("easy", 0, 8, SIZE[0], SIZE[1], out / "cache")
    assert len(seq) == 8 and len(seq.images[0]) == SIZE[0] * SIZE[1] * 3
    assert seq.T_world_cam.shape == (8, 4, 4)


def test_sequence_rendered_at_a_higher_rate_moves_less_per_frame(tmp_path):
    a = B.cached_frames("easy", 0, 4, SIZE[0], SIZE[1], tmp_path)
    b = B.cached_frames("easy", 0, 4, SIZE[0], SIZE[1], tmp_path, fps=60.0)
    assert b.fps == 60.0 and (tmp_path / f"easy_s0_{SIZE[0]}x{SIZE[1]}_4f_60fps.npz").is_file()
    step = lambda s: np.linalg.norm(s.T_world_cam[1][:3, 3] - s.T_world_cam[0][:3, 3])  # noqa: E731
    assert step(b) == pytest.approx(step(a) / 2, rel=0.05)
    assert B.cached_frames("easy", 0, 4, SIZE[0], SIZE[1], tmp_path, fps=60.0).fps == 60.0


def test_pingpong_keeps_motion_continuous():
    idx = B.pingpong(4, 11)
    assert idx.tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]
    assert np.all(np.abs(np.diff(idx)) == 1)
    assert B.pingpong(1, 3).tolist() == [0, 0, 0]


def test_params_are_typed_and_checked():
    from sirenpose_ros.core.config import pipeline_params
    specs = pipeline_params()
    got = B.typed_params([("field_enabled", "false"), ("field_steps_per_frame", "3"),
                          ("field_lr", "1e-3"), ("field_device", "cpu")], specs)
    assert got == {"field_enabled": False, "field_steps_per_frame": 3, "field_lr": 1e-3,
                   "field_device": "cpu"}
    with pytest.raises(ValueError):
        B.typed_params([("no_such_param", "1")], specs)
    with pytest.raises(ValueError):
        B.typed_params([("field_enabled", "maybe")], specs)
    with pytest.raises(ValueError):
        B.parse_param("field_enabled=false")
    with pytest.raises(ValueError):
        B.parse_size("640by480")


def test_cloud_packing_is_the_nodes_and_needs_no_ros():
    """The pipeline mode runs where there is no ROS (the GPU machine): the benchmark packs clouds
    with the node's own function, whose module imports no rclpy."""
    import subprocess
    import sys
    messages = pytest.importorskip("sirenpose_ros.ros.messages")   # needs rclpy
    assert B.cloud_to_array is messages.cloud_to_array
    code = ("import sys, sirenpose_ros.tools.benchmark, sirenpose_ros.io.pointcloud; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs')]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_compare_poses_detects_disagreement():
    # Two runs with the same poses agree exactly; a shifted copy does not.
    stamps = [1, 2, 3, 4, 5]
    T = [np.eye(4)[:3].reshape(-1).tolist() for _ in stamps]
    for i, row in enumerate(T):
        row[3], row[7] = float(i), float(i % 2)        # x along the path, y zig-zag
    ref = {"tracking": {"poses": {"stamps_ns": stamps, "T": T}, "ate_scale": 1.0, "ate_rmse": 0.01}}
    same = {"tracking": {"poses": {"stamps_ns": stamps, "T": [list(r) for r in T]}, "ate_rmse": 0.01}}
    c = B.compare_poses(ref, same)
    assert c["n_common"] == 5 and c["ate_between"] < 1e-9 and c["ate_diff"] == 0.0
    assert c["within_tolerance"]
    bent = [list(r) for r in T]
    bent[2][11] = 0.5                                  # one pose off the plane
    far = B.compare_poses(ref, {"tracking": {"poses": {"stamps_ns": stamps, "T": bent}, "ate_rmse": 0.01}})
    assert far["ate_between"] > 0.05 and not far["within_tolerance"]
    # A shorter reference run: the ATEs cover other frames, only the agreement is judged.
    short = {**ref, "frames": 5}
    longer = {"frames": 9, "tracking": {"poses": {"stamps_ns": stamps, "T": [list(r) for r in T]},
                                        "ate_rmse": 0.5}}
    c = B.compare_poses(short, longer)
    assert "ate_diff" not in c and c["within_tolerance"]
    longer["tracking"]["poses"]["T"] = bent
    assert not B.compare_poses(short, longer)["within_tolerance"]


def test_live_table_renders_from_a_record():
    lat = {"mean": 30.0, "p50": 25.0, "p99": 90.0, "max": 95.0, "n": 100}
    run = {"mode": "live", "label": "node", "size": "640x480", "measured": 100, "params": {},
           "input_hz": 30.0, "output_hz": 24.5, "cloud_hz": 0.0, "frames_without_tf": 18,
           "latency_ms": {"pose": lat, "cloud": B.percentiles([])},
           "node": {"peak_rss_mb": 400.0, "frames_dropped": 15, "frames_received": 130},
           "tracking": {"tracked_share": 0.82, "ate_rmse": 0.002},
           "load_avg_start": [3.0, 2.0, 1.0], "load_avg_end": [3.5, 2.0, 1.0], "node_omp_threads": 1}
    text = B.render_markdown([{"command": "sirenpose_benchmark --mode live", "runs": [run]}])
    row = next(line for line in text.splitlines() if line.startswith("| node |"))
    assert "| 30.0 | 24.5 | 18 / 100 | 25.0 / 90.0 |" in row and "15 / 130" in row and "82 %" in row
    assert "OMP_NUM_THREADS=1" in text


@pytest.mark.parametrize("rate,prewarm", [(0.0, 0), (40.0, 0), (40.0, 4)])
def test_staged_mode_measures_every_frame_through_the_stages(run_doc, rate, prewarm):
    """--staged: the overlapped stages, unpaced or with a camera at a fixed rate; every measured
    frame gets a pose callback (or is counted as dropped before the frontend), and the table
    says which runs were staged. With --prewarm, frames run before the camera starts and are
    not counted, and the measured run starts a new map."""
    out, _ = run_doc
    args = ["--size", f"{SIZE[0]}x{SIZE[1]}", "--frames", str(FRAMES), "--warmup", str(WARMUP),
            "--render-frames", "8", "--render-workers", "1", "--cache-dir", str(out / "cache"),
            "--param", "window_init_min_parallax_deg:=0.5", "--param", "pipeline_map_process:=false",
            "--staged", "--camera-rate", str(rate), "--label", "tiny-staged", "--json", str(out / "s.json"),
            "--prewarm", str(prewarm)]
    assert B.main(args) == 0
    r = json.loads((out / "s.json").read_text())["runs"][0]
    assert r["mode"] == "staged" and r["rate_hz"] == rate and not r["errors"] and r["prewarm"] == prewarm
    # Pre-warm frames are neither measured nor dropped: the measured run is the same either way.
    assert r["measured"] + r["frames_dropped"] == FRAMES - WARMUP
    if rate == 0.0:
        assert r["frames_dropped"] == 0
    assert r["latency_ms"]["pose"]["n"] == r["measured"] and r["fps"] > 0
    assert "frontend" in r["stages_ms"] and "graph" in r["stages_ms"]
    pf = r["per_frame"]
    assert len(pf["index"]) == len(pf["tf_ms"]) == len(pf["frontend_ms"]) == r["measured"]
    assert max(pf["tf_ms"]) == pytest.approx(r["latency_ms"]["pose"]["max"], abs=0.01)
    # What happened to tracking (these tiny frames stay before the map: rotation-only poses and
    # renewed references), in frame order, each message once per run of identical ones.
    ev = r["events"]
    assert [e["index"] for e in ev] == sorted(e["index"] for e in ev)
    assert any("rotation-only" in e["message"] and e["state"] == "tracking" for e in ev)
    assert all(a["message"] != b["message"] or b["index"] > a["index"] + 1 for a, b in zip(ev, ev[1:]))
    text = B.render_markdown([json.loads((out / "s.json").read_text())])
    assert "| tiny-staged |" in text and "Staged runs" in text
