"""The full method on presets rendered at 60 fps, with the motion GNN on every frame and at its
default 30 Hz (docs/accuracy.md, "A 60 Hz camera"); the accuracy tool itself renders at 30 fps.

    PYTHONPATH=$PWD python scripts/accuracy_60fps.py [--presets easy,fast,large_dynamic,close_object]
        [--hz 0,30] [--param name:=value ...]
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np

from sirenpose_ros.core.config import pipeline_params
from sirenpose_ros.synth.sequence import render_sequence
from sirenpose_ros.tools.accuracy import evaluate_one
from sirenpose_ros.tools.benchmark import parse_param, typed_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="easy,fast,large_dynamic,close_object")
    ap.add_argument("--hz", default="0,30", help="graph_scorer_max_hz values to run")
    ap.add_argument("--param", action="append", default=[], help="more parameters, name:=value")
    args = ap.parse_args()
    extra = typed_params([parse_param(p) for p in args.param], pipeline_params())
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            seq = render_sequence(preset, seed=0, n_frames=180, width=320, height=240, fps=60.0)
            gt = Path(tmp) / f"{preset}_gt.npz"
            np.savez(gt, depth=seq.depth, mask=seq.mask, stamps_ns=seq.stamps_ns)
            for hz in (float(h) for h in args.hz.split(",")):
                r = evaluate_one(preset, "full", seq, gt, {**extra, "graph_scorer_max_hz": hz})
                print(f"{preset} 60 fps, graph_scorer_max_hz {hz:g} {extra or ''}: ATE {r['ate_pct']:.2f} % "
                      f"of the path, kp F1 {r['dyn_kp_f1']:.3f}, tracked {r['tracked_share']:.3f}", flush=True)


if __name__ == "__main__":
    main()
