"""The full method on presets rendered at 60 fps, with the motion GNN on every frame and at its
default 30 Hz (docs/accuracy.md, "A 60 Hz camera"); the accuracy tool itself renders at 30 fps.

    PYTHONPATH=$PWD python scripts/accuracy_60fps.py easy,fast,large_dynamic,close_object
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

from sirenpose_ros.synth.sequence import render_sequence
from sirenpose_ros.tools.accuracy import evaluate_one


def main() -> None:
    presets = sys.argv[1].split(",") if len(sys.argv) > 1 else ["easy", "fast", "large_dynamic", "close_object"]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            seq = render_sequence(preset, seed=0, n_frames=180, width=320, height=240, fps=60.0)
            gt = Path(tmp) / f"{preset}_gt.npz"
            np.savez(gt, depth=seq.depth, mask=seq.mask, stamps_ns=seq.stamps_ns)
            for hz in (0.0, 30.0):
                r = evaluate_one(preset, "full", seq, gt, {"graph_scorer_max_hz": hz})
                print(f"{preset} 60 fps, graph_scorer_max_hz {hz:g}: ATE {r['ate_pct']:.2f} % of the path, "
                      f"kp F1 {r['dyn_kp_f1']:.3f}, tracked {r['tracked_share']:.3f}", flush=True)


if __name__ == "__main__":
    main()
