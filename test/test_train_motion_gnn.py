"""Motion GNN training data: the in-the-loop recordings are what the GNN sees when it drives the
pipeline itself (its own beliefs decide which tracks keep a residual and seed the pose-free fits),
not what the GeometricScorer's run shows it."""
import numpy as np
import pytest

from sirenpose_ros.core.motion_gnn import GNNScorer, default_weights_path
from sirenpose_ros.tools import train_motion_gnn as T

SEQ = dict(preset="multi_object", seed=3, n_frames=12, width=160, height=120)




def test_loop_recording_is_the_gnn_driven_run(tmp_path, one_torch_thread):
    args = (SEQ["preset"], SEQ["seed"], SEQ["n_frames"], SEQ["width"], SEQ["height"], tmp_path)
    weights = str(default_weights_path())
    geo = T.record(*args)
    loop = T.record(*args, loop_weights=weights)
    # Cached apart: the key names the in-the-loop weights.
    files = sorted(p.name for p in tmp_path.glob("rec_*.npz"))
    assert len(files) == 2 and any(f"_gnn{T.weights_fingerprint(weights)}_" in f for f in files)
    # The recording holds the GNN-driven pipeline's own outputs, frame for frame.
    cfg = T.pipeline_config()
    _, results, _ = T.run_pipeline(loop["gray"], loop["stamps"], T._camera_from(loop), GNNScorer(cfg, weights=weights))
    np.testing.assert_allclose(loop["geo_p"], np.concatenate([r.dynamic_prob for r in results]))
    # ... which are not the geometric run's: the network sees other beliefs (previous) than in
    # a GeometricScorer recording of the same frames.
    diff = []
    for (og, *_), (ol, *_) in zip(T.frames_of(geo), T.frames_of(loop)):
        common, ig, il = np.intersect1d(og.ids, ol.ids, return_indices=True)
        diff.append(np.abs(og.previous[ig] - ol.previous[il]))
    assert np.concatenate(diff).max() > 0.2
    # Reloading from the cache gives the same data.
    again = T.record(*args, loop_weights=weights)
    np.testing.assert_array_equal(again["prev"], loop["prev"])
