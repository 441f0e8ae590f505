"""Shared helper of the tests: a rendered synthetic sequence through a sequential Pipeline."""
import cv2

from sirenpose_ros.core.camera import CameraModel
from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.core.types import Frame


def process_sequence(seq, params: dict, n: int | None = None) -> list:
    """``Pipeline.process`` on the first ``n`` frames of ``seq`` (all by default): FrameResults."""
    K = seq.K
    cam = CameraModel.pinhole(seq.width, seq.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    pipe = Pipeline(make_config(params))
    n = len(seq.rgb) if n is None else n
    return [pipe.process(Frame(int(seq.stamps_ns[i]), cv2.cvtColor(seq.rgb[i], cv2.COLOR_RGB2GRAY),
                               seq.rgb[i], cam)) for i in range(n)]
