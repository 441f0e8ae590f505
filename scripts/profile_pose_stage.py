"""cProfile of the pose stage alone (``Pipeline.estimate``: graph + motion GNN + window pose),
the stage that sets the staged runner's frame rate. The frontend and the map work run between
the profiled calls but are not profiled; no dense stage.

    PYTHONPATH=$PWD python scripts/profile_pose_stage.py --frames 200 [--param name:=value ...]
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import time
from pathlib import Path

import numpy as np

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.image import decode_image
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.core.types import Frame
from sirenpose_ros.core.config import pipeline_params
from sirenpose_ros.tools.benchmark import cached_frames, parse_param, typed_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="easy")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/render"))
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--no-profile", action="store_true", help="time only (no cProfile overhead)")
    ap.add_argument("--gc", choices=("on", "freeze", "off"), default="on",
                    help="Python's cyclic GC during the measured frames: on, gc.freeze() after "
                         "the warm-up, or disabled")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    seq = cached_frames(args.preset, 0, args.frames, w, h, args.cache_dir, workers=4)
    cfg = make_config({"field_enabled": False,
                       **typed_params([parse_param(p) for p in args.param], pipeline_params())})
    pipe = Pipeline(cfg, async_mapping=True)
    K = seq.K
    cam = CameraModel.pinhole(w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    prof = cProfile.Profile()
    times = []
    try:
        for i, buf in enumerate(seq.images):
            gray, rgb = decode_image("rgb8", w, h, w * 3, buf)
            obs = pipe.observe(Frame(int(i * 1e9 / seq.fps), gray, rgb, cam))
            if i == args.warmup and args.gc != "on":
                gc.collect()
                gc.freeze() if args.gc == "freeze" else gc.disable()
            t0 = time.perf_counter()
            if i >= args.warmup and not args.no_profile:
                prof.enable()
            r = pipe.estimate(obs)
            if i >= args.warmup:
                prof.disable()
                times.append((time.perf_counter() - t0) * 1e3)
            pipe.map_job(pipe.take_dense_job(r))
    finally:
        pipe.close()
    t = np.array(times)
    print(f"estimate(): mean {t.mean():.2f} ms, p50 {np.median(t):.2f}, p99 {np.percentile(t, 99):.2f} "
          f"over {len(t)} frames ({pipe.runtime}; params {args.param}; gc {args.gc}; "
          f"{'time only' if args.no_profile else 'under cProfile'})")
    if args.no_profile:
        return
    for key in ("tottime", "cumtime"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(args.top)
        print(s.getvalue())


if __name__ == "__main__":
    main()
