"""Model runtimes behind one interface: ``make_runner(spec, backend, device, cache_dir)``.

Importing this package never imports onnx, onnxruntime or tensorrt: their factories are
registered here and import their runtime on first use, raising ``BackendUnavailable`` where it
is missing.
"""
from __future__ import annotations

import inspect
import logging

from .runtime import (BACKENDS, BackendUnavailable, ModelRunner, ModelSpec, ShapeProfile,
                      TorchCudaGraphRunner, TorchRunner, auto_order, cuda_available, make_runner)

log = logging.getLogger(__name__)


def _accepted(cls, options: dict) -> dict:
    """The options ``cls`` takes. ``make_runner(..., backend='auto', precision='fp16')`` hands
    the same options to every backend it tries, so each keeps its own (e.g. TensorRT takes
    ``precision``, ONNX Runtime ``threads``)."""
    params = inspect.signature(cls.__init__).parameters
    dropped = sorted(set(options) - set(params))
    if dropped:
        log.debug("inference: %s ignores options %s", cls.__name__, dropped)
    return {k: v for k, v in options.items() if k in params}


def _onnxruntime(spec, device, cache_dir=None, **options):
    try:
        from .ort_runner import OrtRunner
    except ImportError as exc:      # onnx (needed for export) missing
        raise BackendUnavailable(f"onnxruntime backend cannot load: {exc}") from exc
    return OrtRunner(spec, device, cache_dir, **_accepted(OrtRunner, options))


def _tensorrt(spec, device, cache_dir=None, **options):
    try:
        from .trt_runner import TrtRunner
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt backend cannot load: {exc}") from exc
    return TrtRunner(spec, device, cache_dir, **_accepted(TrtRunner, options))


def _torch_cudagraph(spec, device, cache_dir=None, **options):
    return TorchCudaGraphRunner(spec, device, **_accepted(TorchCudaGraphRunner, options))


BACKENDS.setdefault("onnxruntime", _onnxruntime)
BACKENDS.setdefault("tensorrt", _tensorrt)
BACKENDS.setdefault("torch-cudagraph", _torch_cudagraph)

__all__ = ["BACKENDS", "BackendUnavailable", "ModelRunner", "ModelSpec", "ShapeProfile",
           "TorchCudaGraphRunner", "TorchRunner", "auto_order", "cuda_available", "make_runner"]
