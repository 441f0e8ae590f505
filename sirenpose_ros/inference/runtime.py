"""One inference interface over several runtimes (torch CPU/CUDA, ONNX Runtime, TensorRT).

A network is described once by a :class:`ModelSpec`; :func:`make_runner` returns a callable
:class:`ModelRunner` for the chosen backend. Callers never branch on the backend.

This file holds the interface and the torch reference runner. ONNX export, ONNX Runtime and
TensorRT runners (with their engine cache) live next to it and register in ``BACKENDS``.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

log = logging.getLogger(__name__)

# min / opt / max shape of one input, for runtimes that build per-shape-range engines (TensorRT).
ShapeProfile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class ModelSpec:
    """Everything a runtime needs to build, export and run one network."""
    name: str                                           # e.g. "xfeat_backbone"
    build: Callable[[], torch.nn.Module]                # returns the module with weights loaded
    example_inputs: Callable[[], tuple[torch.Tensor, ...]]   # representative inputs (CPU tensors)
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    weights_id: str = ""                                # hash of the weights (cache key)
    # input name -> (min, opt, max) shapes; required for every input with dynamic axes when the
    # spec is built into a TensorRT engine (see trt_runner.derive_shape_profiles).
    shape_profiles: dict[str, ShapeProfile] = field(default_factory=dict)


class BackendUnavailable(RuntimeError):
    """The requested runtime cannot run here (package missing, no GPU, unsupported device)."""


class ModelRunner(Protocol):
    spec: ModelSpec
    backend: str        # "torch-cpu", "torch-cuda", "onnxruntime-cpu", "tensorrt"
    device: str         # "cpu" or "cuda"

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs and outputs are torch tensors on ``device``."""
        ...


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class TorchRunner:
    """The reference runner: the module itself, in eval mode, under inference_mode."""

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self.backend = f"torch-{device}"
        self.module = spec.build().eval().to(device)

    @torch.inference_mode()
    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class TorchCudaGraphRunner:
    """torch on CUDA with the whole forward captured once as a CUDA graph (static shapes only).

    Replaying a graph launches every kernel with one call, which removes the per-kernel Python
    and launch overhead that dominates small networks. Inputs are copied into the captured
    buffers; outputs are copied out so that results survive the next replay."""

    def __init__(self, spec: ModelSpec, device: str = "cuda", warmup: int = 3) -> None:
        if device != "cuda" or not cuda_available():
            raise BackendUnavailable("CUDA graphs need a CUDA device")
        if spec.dynamic_axes:
            raise BackendUnavailable(f"{spec.name} has dynamic axes; CUDA graphs need static "
                                     "shapes")
        self.spec = spec
        self.device = device
        self.backend = "torch-cudagraph"
        self.module = spec.build().eval().to(device)
        self._static_in = tuple(t.to(device).clone() for t in spec.example_inputs())
        # Warm-up on a side stream (as torch documents for capture): lazy initialisation such as
        # cuDNN autotuning must not happen inside the capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmup):
                self.module(*self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other pipeline threads may launch CUDA work while this one captures.
        with torch.inference_mode(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            out = self.module(*self._static_in)
        self._static_out = tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self._static_in):
            raise TypeError(f"{self.spec.name} takes {len(self._static_in)} inputs")
        for buf, t in zip(self._static_in, inputs):
            if t.shape != buf.shape or t.dtype != buf.dtype:
                raise ValueError(f"{self.spec.name}: captured for {tuple(buf.shape)} {buf.dtype}, "
                                 f"got {tuple(t.shape)} {t.dtype}")
            buf.copy_(t)
        self.graph.replay()
        return tuple(o.clone() for o in self._static_out)


def cuda_available() -> bool:
    return torch.cuda.is_available()


# backend name -> factory(spec, device, cache_dir, **options). "torch" is always here; the
# package __init__ registers "onnxruntime", "tensorrt" and "torch-cudagraph" lazily (their
# factories import their runtime on first use and raise BackendUnavailable where it is missing).
BACKENDS: dict[str, Callable[..., ModelRunner]] = {
    "torch": lambda spec, device, cache_dir=None, **options: TorchRunner(spec, device),
}


def auto_order(spec: ModelSpec, device: str, in_caller_graph: bool = False) -> tuple[str, ...]:
    """Backends ``auto`` tries, best first. CUDA graphs only pay off (and only work) when every
    input has a fixed shape, so specs with dynamic axes skip them. ``in_caller_graph``: the
    caller captures its calls to the runner inside a CUDA graph of its own (with the pre- and
    post-processing around them), which wants the plain torch module: a runner that replays a
    graph of its own cannot be captured inside another."""
    if device == "cuda":
        static = not spec.dynamic_axes and not in_caller_graph
        return ("tensorrt", "torch-cudagraph", "torch") if static else ("tensorrt", "torch")
    return ("onnxruntime", "torch")


def make_runner(spec: ModelSpec, backend: str = "auto", device: str = "auto",
                cache_dir=None, in_caller_graph: bool = False, **options) -> ModelRunner:
    """``backend`` in {"auto", "torch", "torch-cudagraph", "onnxruntime", "tensorrt"}; ``auto``
    picks TensorRT, then torch with CUDA graphs (static shapes), then torch on CUDA; on the CPU
    ONNX Runtime, then torch. The choice, and why better backends were skipped, is logged.
    ``in_caller_graph``: see :func:`auto_order`. ``options`` go to the backend factory (e.g.
    ``precision="fp16"`` for TensorRT)."""
    device_why = f"device '{device}' requested"
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
        device_why = "auto: CUDA available" if device == "cuda" else "auto: no CUDA device"
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"inference backend '{backend}' is unknown; "
                             f"known: {sorted(BACKENDS)}")
        return BACKENDS[backend](spec, device, cache_dir, **options)
    errors = []
    order = auto_order(spec, device, in_caller_graph)
    for name in order:
        if name not in BACKENDS:
            errors.append(f"{name}: not registered")
            continue
        try:
            runner = BACKENDS[name](spec, device, cache_dir, **options)
        except Exception as exc:   # fall through to the next runtime, but say why
            errors.append(f"{name}: {exc}")
            if not isinstance(exc, BackendUnavailable):   # installed but broken: worth a warning
                log.warning("inference: %s failed on %s for %s: %s", name, device, spec.name, exc)
            continue
        log.info("inference: %s runs on %s (%s; first available of %s)%s", spec.name,
                 runner.backend, device_why, "/".join(order),
                 f"; skipped {'; '.join(errors)}" if errors else "")
        return runner
    raise RuntimeError(f"no inference backend could run {spec.name}: {'; '.join(errors)}")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
