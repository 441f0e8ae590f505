"""Stages in child processes: the frontend worker (core/frontend_worker.py) on top of the
generic child worker (core/child.py)."""
import cv2
import numpy as np
import pytest

from sirenpose_ros.core.child import ChildError, error_type
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.frontend import KLTFrontend
from sirenpose_ros.core.frontend_worker import FrontendProcess
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.synth.sequence import render_sequence


@pytest.fixture(scope="module")
def grays():
    seq = render_sequence("easy", seed=0, n_frames=8, width=320, height=240)
    return [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in seq.rgb]


def test_frontend_process_tracks_what_the_frontend_tracks_here(grays):
    cfg = make_config({})
    here, there = KLTFrontend(cfg), FrontendProcess(dict(cfg))
    try:
        for i, g in enumerate(grays):
            if i == 5:                           # reset reaches the child
                here.reset()
                there.reset()
            a, b = here.track(g), there.track(g)
            assert len(a) > 50
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.age, b.age)
            assert np.array_equal(a.px, b.px)
        # A failing request raises here with the child's exception type; the child goes on.
        with pytest.raises(ChildError) as err:
            there.track(np.zeros((4, 4, 7), np.float64))
        assert err.value.child_type == error_type(err.value) != "ChildError"
        assert len(there.track(grays[0])) > 0
    finally:
        there.close()
    with pytest.raises(RuntimeError, match="exited"):
        there.track(grays[0])


def test_pipeline_runs_the_frontend_in_a_process_only_when_asked_and_staged():
    on = make_config({"pipeline_frontend_process": "on", "field_enabled": False,
                      "pipeline_map_process": False})
    pipe = Pipeline(on, async_mapping=True)
    try:
        assert isinstance(pipe.frontend, FrontendProcess)
        assert f"in child process {pipe.frontend.pid}" in pipe.runtime
    finally:
        pipe.close()
    # 'auto' keeps KLT here (no process: OpenCV releases the GIL), as does the sequential mode.
    auto = make_config({"field_enabled": False, "pipeline_map_process": False})
    assert isinstance(Pipeline(auto, async_mapping=True).frontend, KLTFrontend)
    assert isinstance(Pipeline(on).frontend, KLTFrontend)


def test_error_type_names_the_exception_a_child_raised():
    assert error_type(ChildError("w", "OutOfMemoryError", "CUDA out of memory")) == "OutOfMemoryError"
    assert error_type(ValueError("x")) == "ValueError"


def test_a_child_that_fails_to_start_says_why():
    with pytest.raises(RuntimeError, match="failed to start.*ParamError|failed to start.*Error"):
        FrontendProcess({"frontend_max_keypoints": -5})
