"""Synthetic dynamic scenes with exact ground truth (poses, depth, motion masks), CPU-only.

scene (geometry, motions) -> texture (procedural textures) -> render (ray casting) ->
presets (named scenarios) -> sequence (rendering, rosbag2 + ground-truth files).
"""
from .presets import PRESETS, preset
from .sequence import Sequence, load_sequence, render_sequence, write_sequence

__all__ = ["PRESETS", "preset", "Sequence", "render_sequence", "write_sequence", "load_sequence"]
