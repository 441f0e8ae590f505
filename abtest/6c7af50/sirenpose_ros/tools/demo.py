"""The main job on a built-in default: synthetic dynamic sequence -> rosbag2 -> live node over DDS
on localhost -> recorded outputs -> trajectory (TUM), cloud (PLY), metrics (JSON) and a picture.

    sirenpose_demo --out out/demo            # defaults: preset 'easy', 640x480, 150 frames at 30 Hz

Everything runs on this host: DDS is confined with the project's Fast DDS profile (shared
memory + loopback) and a private ROS_DOMAIN_ID.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from sirenpose_ros.core.params import parse_assignments
from sirenpose_ros.ros.dds import confine_this_process, local_dds_env, private_domain_id

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="sirenpose_demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    ap.add_argument("--preset", default="easy", help="synthetic scene preset (default easy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=float, default=30.0, help="camera rate of the sequence")
    ap.add_argument("--rate", type=float, default=0.5,
                    help="replay speed factor; the node drops frames it cannot keep up with "
                         "(default 0.5 = 15 Hz, what a 2-core CPU sustains with dense clouds)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="extra node parameter (repeatable)")
    ap.add_argument("--bag", default=None, help="replay this bag instead of rendering one "
                    "(needs --gt for metrics)")
    ap.add_argument("--gt", default=None, help="ground-truth TUM file for --bag")
    return ap.parse_args(argv)


def run_demo(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domain = private_domain_id()
    confine_this_process(domain)
    env = local_dds_env(domain)

    t0 = time.monotonic()
    if args.bag:
        bag, gt_path = Path(args.bag), Path(args.gt) if args.gt else None
        gt = None
    else:
        from sirenpose_ros.synth.sequence import render_sequence, write_sequence
        seq = render_sequence(args.preset, seed=args.seed, n_frames=args.frames,
                              width=args.width, height=args.height, fps=args.fps)
        write_sequence(seq, out / "sequence")
        bag, gt_path = out / "sequence" / "bag", out / "sequence" / "groundtruth.tum"
        gt = seq
        print(f"[demo] rendered '{args.preset}' ({args.frames} frames {args.width}x{args.height}) "
              f"in {time.monotonic() - t0:.1f} s -> {bag}")

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from sirenpose_ros.ros import spawn
    from sirenpose_ros.ros.recorder import OutputRecorder

    params = {"use_sim_time": True, "input_qos": "sensor_data"}
    params.update(parse_assignments(args.param))
    node_proc = spawn.start(spawn.node_command(params, {"image": IMAGE_TOPIC, "camera_info": INFO_TOPIC}),
                            env, out / "node.log")
    rclpy.init()
    rec = OutputRecorder()
    executor = SingleThreadedExecutor()
    executor.add_node(rec)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        deadline = time.monotonic() + 30
        while rec.count_subscribers(IMAGE_TOPIC) == 0:
            if node_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node did not start (see {out / 'node.log'})")
            time.sleep(0.1)
        t_play = time.monotonic()
        replay = spawn.start([sys.executable, "-m", "sirenpose_ros.tools.replay", str(bag),
                              "--rate", str(args.rate)], env, out / "replay.log")
        replay.wait()
        # The node may still be working on the last frame; wait until outputs settle.
        last, settle = -1, time.monotonic()
        while time.monotonic() - settle < 2.0:
            n = len(rec.odom)
            if n != last:
                last, settle = n, time.monotonic()
            time.sleep(0.1)
        wall = time.monotonic() - t_play
        diag = rec.latest_diagnostics()
        rc = spawn.stop(node_proc)
        stamps, T_est = rec.camera_trajectory()
        T_base_cam = rec.camera_extrinsic()
        cloud = rec.map_cloud[2] if rec.map_cloud is not None else None
        last_cloud = rec.clouds[-1][2] if rec.clouds else None
        n_clouds = rec.n_clouds
    finally:
        executor.shutdown()
        rec.destroy_node()
        rclpy.try_shutdown()
        if node_proc.poll() is None:
            spawn.stop(node_proc)

    return _write_outputs(out, args, stamps, T_est, cloud, last_cloud, gt, gt_path, diag, rc,
                          wall, n_clouds, T_base_cam)


def _write_outputs(out, args, stamps, T_est, map_arr, cloud_arr, gt, gt_path, diag, rc, wall,
                   n_clouds, T_base_cam) -> dict:
    from sirenpose_ros.core.types import Cloud
    from sirenpose_ros.eval import metrics as E
    from sirenpose_ros.eval.plot import plot_summary
    from sirenpose_ros.io.ply import write_ply
    from sirenpose_ros.io.tum import read_tum, write_tum

    write_tum(out / "trajectory.tum", stamps, T_est)
    cloud = None
    for arr, name in ((map_arr, "map.ply"), (cloud_arr, "cloud.ply")):
        if arr is None or len(arr) == 0:
            continue
        c = Cloud(np.stack([arr["x"], arr["y"], arr["z"]], 1), arr["rgb"].copy(),
                  arr["dynamic"].copy(), np.stack([arr["vx"], arr["vy"], arr["vz"]], 1))
        write_ply(out / name, c)
        cloud = cloud if cloud is not None else c
    result: dict = {"frames_with_pose": int(len(stamps)), "node_exit_code": rc,
                    "wall_time_s": round(wall, 2), "clouds_received": n_clouds,
                    "node_diagnostics": diag}
    n_frames = len(gt.stamps_ns) if gt is not None else None
    if gt_path is not None and len(stamps) >= 3:
        gt_stamps, gt_T = read_tum(gt_path)
        ia, ib = E.associate(stamps, gt_stamps, max_dt_ns=1_000_000)
        n_frames = n_frames or len(gt_stamps)
        ate = E.ate(T_est[ia], gt_T[ib], align="sim3")
        rpe = E.rpe(T_est[ia], gt_T[ib], delta=1)
        length = E.trajectory_length(gt_T)
        result.update({
            "ate_rmse": ate["rmse"], "ate_percent_of_length": 100 * ate["rmse"] / max(length, 1e-9),
            "rpe_trans_rmse": rpe["trans_rmse"], "rpe_rot_rmse_deg": rpe["rot_rmse_deg"],
            "trajectory_length": length, "sim3_scale": ate["scale"],
            "tracked_share": E.tracked_share(len(ia), n_frames), "frames_in_sequence": n_frames})
        s, R, t = E.fit_alignment(T_est[ia], gt_T[ib], "sim3")
        plot_summary(out / "summary.png", E.apply_alignment(T_est[ia], s, R, t), gt_T[ib],
                     cloud=_aligned_cloud(cloud, T_base_cam, s, R, t) if cloud is not None else None,
                     title=f"sirenpose demo: {args.preset}", up="+z" if gt is not None else "-y",
                     metrics={
                         k: result[k] for k in ("ate_rmse", "ate_percent_of_length",
                                                "rpe_trans_rmse", "rpe_rot_rmse_deg", "tracked_share")})
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _aligned_cloud(cloud, T_base_cam, s, R, t):
    """Bring a cloud published in odom into the ground truth's frame, for the picture only:
    odom -> the first camera's optical frame (the inverse of the latched extrinsic), then the
    trajectory's Sim(3) alignment."""
    from sirenpose_ros.core.types import Cloud
    from sirenpose_ros.io.pointcloud import transform_cloud
    cam = transform_cloud(cloud, np.linalg.inv(T_base_cam))
    xyz = s * cam.xyz.astype(np.float64) @ R.T + t
    return Cloud(xyz.astype(np.float32), cloud.rgb, cloud.dynamic, cloud.velocity)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.monotonic()
    result = run_demo(args)
    print(f"[demo] done in {time.monotonic() - t0:.1f} s; outputs in {args.out}/")
    for key in ("frames_in_sequence", "frames_with_pose", "tracked_share", "ate_rmse",
                "ate_percent_of_length", "rpe_trans_rmse", "rpe_rot_rmse_deg", "clouds_received"):
        if key in result:
            v = result[key]
            print(f"  {key:24s} {v:.4f}" if isinstance(v, float) else f"  {key:24s} {v}")
    return 0 if result.get("frames_with_pose", 0) > 0 and result.get("node_exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
