#!/usr/bin/env python3
"""Where the learned frontend's GPU time goes: ``torch.profiler`` over ``track`` on rendered
frames, eagerly (kernel by kernel, so each kernel keeps its name), and the table of CUDA time by
operator, largest first.

On the lent GPU machine:
    PYTHONPATH=/tmp/site:$PWD python3 scripts/profile_frontend.py --size 640x480 --top-k 512
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from sirenpose_ros.core import xfeat_frontend as xf
from sirenpose_ros.core.config import Config
from sirenpose_ros.core.params import validate

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from gpu_frontend_bench import frames  # noqa: E402  (same frames as the micro-benchmark)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--top-k", type=int, default=512)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    grays = frames("easy", 20, w, h)
    fe = xf.XFeatFrontend(Config(validate(xf.PARAMS, {"xfeat_device": "cuda", "xfeat_backend": "torch",
                                                      "xfeat_top_k": args.top_k, "xfeat_cuda_graph": False})))
    for g in grays[:5]:
        fe.track(g)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(args.frames):
            fe.track(grays[i % len(grays)])
        torch.cuda.synchronize()
    print(f"{args.size} top_k {args.top_k}, {args.frames} frames; times are totals over the frames")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
