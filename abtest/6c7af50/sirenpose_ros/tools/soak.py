"""Soak test of the live node: a synthetic camera at a fixed rate for a long time, with the node's
memory, throughput, drops and latency sampled every second.

    sirenpose_soak --duration 600 --rate 30 --width 320 --height 240 --preset easy --out out/soak

Renders a sequence once, starts the node in its own process (DDS confined to this host, private
domain), then publishes the frames in a ping-pong loop (forward, then backward, so the camera
motion stays continuous) with stamps that always increase, so the node never sees a bag-loop
reset. Every second it samples the node's RSS, threads and open files from /proc/<pid> and its
/diagnostics (counters, latency p50/p99, GPU memory). Writes soak.csv (time series), soak.json
(summary) and soak.png (RSS over time), and prints the summary. Exit code 0 when the node
survived and processed frames.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from sirenpose_ros.core.params import parse_assignments
from sirenpose_ros.ros.dds import confine_this_process, local_dds_env, private_domain_id

IMAGE_TOPIC = "/soak/image_raw"
INFO_TOPIC = "/soak/camera_info"
FRAME_ID = "soak_camera_optical"
# Node diagnostics copied into every sample (counters are cumulative).
DIAG_KEYS = ("frames_received", "frames_processed", "frames_dropped", "latency_p50_ms",
             "latency_p99_ms", "output_rate_hz", "gpu_mem_mb", "rss_mb", "state", "resets",
             "tracking_lost", "pipeline_error", "bad_image", "gpu_out_of_memory")
COLUMNS = ("t_s", "frames_sent", "odom_received", "node_rss_mb", "node_threads", "node_fds",
           "node_cpu_percent") + DIAG_KEYS


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="sirenpose_soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of publishing (default 600)")
    ap.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz (default 30)")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--preset", default="easy", help="synthetic scene preset (default easy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=300, help="frames rendered once and looped (default 300)")
    ap.add_argument("--warmup", type=float, default=0.2,
                    help="share of the duration treated as warm-up for the RSS growth (default 0.2)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="extra node parameter (repeatable)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment variable of the node process (repeatable), e.g. "
                         "OMP_NUM_THREADS=1")
    ap.add_argument("--out", default="out/soak", help="output folder (default out/soak)")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------ /proc sampling
def proc_sample(pid: int, last: dict) -> dict:
    """RSS (MB), threads, open files and CPU % (since the previous call) of a process."""
    out = {"node_rss_mb": float("nan"), "node_threads": -1, "node_fds": -1,
           "node_cpu_percent": float("nan")}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["node_rss_mb"] = int(line.split()[1]) / 1024.0
                elif line.startswith("Threads:"):
                    out["node_threads"] = int(line.split()[1])
        out["node_fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime
        now = time.monotonic()
        if "cpu_s" in last:
            out["node_cpu_percent"] = 100.0 * (cpu_s - last["cpu_s"]) / max(now - last["t"], 1e-6)
        last.update(cpu_s=cpu_s, t=now)
    except (OSError, ValueError, IndexError):
        pass          # the process is gone: the caller notices through its exit code
    return out


# ------------------------------------------------------------------------------ summary
def summarize(rows: list[dict], args, exit_code: int | None, crashed_at: float | None,
              frames_sent: int, odom: int, final: dict) -> dict:
    t = np.array([r["t_s"] for r in rows], float)
    rss = np.array([r["node_rss_mb"] for r in rows], float)
    ok = np.isfinite(rss)
    t, rss = t[ok], rss[ok]
    warm = t >= args.warmup * args.duration
    summary: dict = {
        "duration_s": args.duration, "rate_hz": args.rate, "width": args.width,
        "height": args.height, "preset": args.preset, "frames_rendered": args.frames,
        "params": dict(p.split(":=", 1) for p in args.param),
        "node_env": dict(e.split("=", 1) for e in args.env),
        "frames_sent": frames_sent, "odom_received": odom,
        "frames_received": int(final.get("frames_received", 0)),
        "frames_processed": int(final.get("frames_processed", 0)),
        "frames_dropped_in_node": int(final.get("frames_dropped", 0)),
        "frames_lost_in_transport": max(frames_sent - int(final.get("frames_received", 0)), 0),
        "latency_p50_ms": float(final.get("latency_p50_ms", "nan")),
        "latency_p99_ms": float(final.get("latency_p99_ms", "nan")),
        "latency_p99_ms_max_sample": max((float(r["latency_p99_ms"]) for r in rows
                                          if r.get("latency_p99_ms") not in (None, "")), default=None),
        "pipeline_errors": int(final.get("pipeline_error", 0)),
        "resets": int(final.get("resets", 0)), "tracking_lost": int(final.get("tracking_lost", 0)),
        "gpu_mem_mb_max": max((float(r["gpu_mem_mb"]) for r in rows
                               if r.get("gpu_mem_mb") not in (None, "")), default=None),
        "node_exit_code": exit_code, "crashed": crashed_at is not None, "crashed_at_s": crashed_at,
        "samples": len(rows),
    }
    processed = summary["frames_processed"]
    summary["processed_rate_hz"] = processed / args.duration if args.duration else None
    if rss.size:
        summary.update(rss_mb_min=float(rss.min()), rss_mb_max=float(rss.max()),
                       rss_mb_final=float(rss[-1]))
    if warm.sum() >= 2:
        base = float(rss[warm][0])
        slope = np.polyfit(t[warm], rss[warm], 1)[0] * 60.0
        summary.update(rss_mb_after_warmup=base, rss_growth_after_warmup_percent=100.0 * (rss[-1] - base) / base,
                       rss_slope_after_warmup_mb_per_min=float(slope))
    return summary


def plot(rows: list[dict], summary: dict, args, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [r["t_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(t, [r["node_rss_mb"] for r in rows], color="tab:blue", label="node RSS (MB)")
    ax.axvspan(0, args.warmup * args.duration, color="0.9", label="warm-up")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RSS (MB)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(t, [float(r.get("output_rate_hz") or 0.0) for r in rows], color="tab:orange",
             alpha=0.7, label="output rate (Hz)")
    ax2.set_ylabel("output rate (Hz)", color="tab:orange")
    growth = summary.get("rss_growth_after_warmup_percent")
    ax.set_title(f"sirenpose soak: {args.preset} {args.width}x{args.height} @ {args.rate:g} Hz, "
                 f"{args.duration:g} s; RSS growth after warm-up "
                 + (f"{growth:+.1f}%" if growth is not None else "n/a"), fontsize=9)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------ the run
def run_soak(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domain = private_domain_id()
    confine_this_process(domain)
    env = local_dds_env(domain)
    env.update(e.split("=", 1) for e in args.env)

    from sirenpose_ros.synth.sequence import render_sequence
    t0 = time.monotonic()
    seq = render_sequence(args.preset, seed=args.seed, n_frames=args.frames, width=args.width,
                          height=args.height, fps=args.rate)
    print(f"[soak] rendered {args.frames} frames {args.width}x{args.height} '{args.preset}' in "
          f"{time.monotonic() - t0:.1f} s", flush=True)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from sirenpose_ros.ros import spawn
    from sirenpose_ros.ros.messages import ns_to_stamp

    params = {"diagnostics_period": 0.5, "extrinsics_source": "parameters"}
    params.update(parse_assignments(args.param))
    proc = spawn.start(spawn.node_command(params, {"image": IMAGE_TOPIC, "camera_info": INFO_TOPIC}),
                       env, out / "node.log")
    rclpy.init()
    node = rclpy.create_node("sirenpose_soak")
    camera_qos = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT,
                            history=HistoryPolicy.KEEP_LAST, depth=5)   # like a camera driver
    pub_image = node.create_publisher(Image, IMAGE_TOPIC, camera_qos)
    pub_info = node.create_publisher(CameraInfo, INFO_TOPIC, camera_qos)
    lock = threading.Lock()
    state = {"diag": {}, "odom": 0}

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("/sirenpose:"):
                with lock:
                    state["diag"] = {kv.key: kv.value for kv in status.values}

    def on_odom(_msg: Odometry) -> None:
        with lock:
            state["odom"] += 1

    reliable = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=50)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, reliable)
    node.create_subscription(Odometry, "/odom", on_odom, reliable)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    # Messages built once; only the stamps change (publishing costs one copy of the data).
    h, w = args.height, args.width
    K = seq.K
    images = [Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
                    data=frame.tobytes()) for frame in seq.rgb]
    info = CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[float(v) for v in K.reshape(9)], r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                      p=[float(v) for v in (K[0, 0], 0, K[0, 2], 0, 0, K[1, 1], K[1, 2], 0, 0, 0, 1, 0)])
    info.header.frame_id = FRAME_ID
    for m in images:
        m.header.frame_id = FRAME_ID
    order = list(range(len(images))) + list(range(len(images) - 2, 0, -1))   # ping-pong
    del seq

    rows: list[dict] = []
    sent = 0
    crashed_at = None
    exit_code = None
    try:
        deadline = time.monotonic() + 60
        while pub_image.get_subscription_count() == 0 or pub_info.get_subscription_count() == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node did not start (see {out / 'node.log'})")
            time.sleep(0.1)
        print(f"[soak] node pid {proc.pid} subscribed; publishing {args.rate:g} Hz for "
              f"{args.duration:g} s", flush=True)
        period_ns = int(round(1e9 / args.rate))
        stamp0 = time.time_ns()
        start = time.monotonic()
        next_sample = start
        last_cpu: dict = {}
        while True:
            now = time.monotonic()
            if now - start >= args.duration:
                break
            if proc.poll() is not None:
                crashed_at = now - start
                print(f"[soak] node exited with code {proc.returncode} at {crashed_at:.1f} s", flush=True)
                break
            if now >= next_sample:
                with lock:
                    diag, odom = dict(state["diag"]), state["odom"]
                row = {"t_s": round(now - start, 3), "frames_sent": sent, "odom_received": odom,
                       **proc_sample(proc.pid, last_cpu), **{k: diag.get(k, "") for k in DIAG_KEYS}}
                rows.append(row)
                next_sample += 1.0
            due = start + sent / args.rate
            if now < due:
                time.sleep(min(due - now, max(next_sample - now, 0.0), 0.05))
                continue
            stamp = ns_to_stamp(stamp0 + sent * period_ns)   # always increasing: no loop reset
            msg = images[order[sent % len(order)]]
            msg.header.stamp = stamp
            info.header.stamp = stamp
            pub_info.publish(info)
            pub_image.publish(msg)
            sent += 1
        # Let the node finish its last frame and publish a final diagnostics message.
        time.sleep(2.0)
        with lock:
            final, odom = dict(state["diag"]), state["odom"]
        if crashed_at is None:
            rows.append({"t_s": round(time.monotonic() - start, 3), "frames_sent": sent,
                         "odom_received": odom, **proc_sample(proc.pid, last_cpu),
                         **{k: final.get(k, "") for k in DIAG_KEYS}})
    finally:
        exit_code = spawn.stop(proc) if proc.poll() is None else proc.returncode
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()

    summary = summarize(rows, args, exit_code, crashed_at, sent, odom, final)
    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "soak.json").write_text(json.dumps(summary, indent=2))
    plot(rows, summary, args, out / "soak.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if (args.duration <= 0 or args.rate <= 0 or args.frames < 2 or not 0 <= args.warmup < 1
            or any(":=" not in p for p in args.param) or any("=" not in e for e in args.env)):
        print("sirenpose_soak: need --duration > 0, --rate > 0, --frames >= 2, 0 <= --warmup < 1, "
              "--param NAME:=VALUE, --env NAME=VALUE", file=sys.stderr)
        return 2
    s = run_soak(args)
    print(f"[soak] outputs in {args.out}/ (soak.json, soak.csv, soak.png, node.log)")
    growth = s.get("rss_growth_after_warmup_percent")
    print(f"  RSS after warm-up {s.get('rss_mb_after_warmup', float('nan')):.1f} MB, final "
          f"{s.get('rss_mb_final', float('nan')):.1f} MB, growth "
          + (f"{growth:+.2f}%" if growth is not None else "n/a")
          + f" ({s.get('rss_slope_after_warmup_mb_per_min', float('nan')):+.2f} MB/min); min "
          f"{s.get('rss_mb_min', float('nan')):.1f} max {s.get('rss_mb_max', float('nan')):.1f} MB")
    print(f"  frames sent {s['frames_sent']}, received {s['frames_received']}, processed (out) "
          f"{s['frames_processed']} ({s['processed_rate_hz']:.1f} Hz), poses {s['odom_received']}")
    print(f"  drops: {s['frames_dropped_in_node']} in the node (busy), "
          f"{s['frames_lost_in_transport']} in transport")
    print(f"  latency p50 {s['latency_p50_ms']:.1f} ms, p99 {s['latency_p99_ms']:.1f} ms; "
          f"pipeline errors {s['pipeline_errors']}, resets {s['resets']}, GPU mem max "
          f"{s['gpu_mem_mb_max']} MB")
    print(f"  crashes: {'yes at %.1f s' % s['crashed_at_s'] if s['crashed'] else 'none'}; "
          f"node exit code {s['node_exit_code']}")
    return 0 if not s["crashed"] and s["node_exit_code"] == 0 and s["frames_processed"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
