"""TensorRT 10 runner: ONNX -> engine (cached) -> execute_async_v3 on torch's CUDA stream.

``tensorrt`` is imported only when a runner is built, so this module imports anywhere.
Flow (TensorRT 10 Python API, name-based tensor API):
  build:  Builder(logger).create_network(0) (explicit batch is the only mode in TRT 10),
          OnnxParser(network, logger).parse(onnx bytes), builder config (workspace pool, FP16
          flag), one optimisation profile (min/opt/max per dynamic input),
          build_serialized_network -> bytes, stored in the engine cache.
  load:   Runtime(logger).deserialize_cuda_engine(bytes); engine.create_execution_context().
  run:    every IO tensor gets one torch CUDA buffer sized for the profile's max shapes, bound
          once with set_tensor_address; a call copies inputs into the buffers' leading
          elements, sets input shapes that changed, runs execute_async_v3 on torch's current
          stream (so it is ordered with the torch work around it, no synchronisation) and
          returns the outputs (copies by default, so results survive the next call).
The pure parts (shape profiles, binding plan, dtype map, shape checks) are separate functions
so they are tested without TensorRT or a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import EngineCache, cache_subdir, engine_cache_key
from .runtime import BackendUnavailable, ModelSpec, ShapeProfile

PRECISIONS = ("fp32", "fp16")

# trt.DataType member names -> torch dtypes (TensorRT 10 IO types).
TRT_DTYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
    "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
    "BOOL": torch.bool,
}


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"TensorRT is not installed ({exc}); the 'tensorrt' backend needs the TensorRT 10 "
            "Python package on an NVIDIA GPU machine. Use backend='torch' (CUDA or CPU) or "
            "'onnxruntime' (CPU).") from exc
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailable(f"TensorRT {tensorrt.__version__} found; this runner uses the "
                                 "TensorRT 10 tensor API")
    return tensorrt


# ---------------------------------------------------------------- pure planning functions

def derive_shape_profiles(spec: ModelSpec,
                          example_shapes: list[tuple[int, ...]]) -> dict[str, ShapeProfile]:
    """(min, opt, max) per input. Static inputs get their example shape three times; inputs
    with dynamic axes take the spec's ``shape_profiles`` entry, which must keep every static axis
    at the example size, order min <= opt <= max, and give the same range to one axis symbol
    wherever it appears (TensorRT rejects profiles where e.g. keypoints and descriptors of the
    same image disagree on N)."""
    if len(example_shapes) != len(spec.input_names):
        raise ValueError(f"{spec.name}: {len(example_shapes)} example shapes for "
                         f"{len(spec.input_names)} inputs")
    profiles: dict[str, ShapeProfile] = {}
    symbol_ranges: dict[str, tuple[int, int, int]] = {}
    for name, example in zip(spec.input_names, example_shapes):
        example = tuple(int(d) for d in example)
        dyn = spec.dynamic_axes.get(name, {})
        given = spec.shape_profiles.get(name)
        if not dyn:
            if given is not None and any(tuple(s) != example for s in given):
                raise ValueError(f"{spec.name}.{name} is static {example} but its shape profile "
                                 f"is {given}")
            profiles[name] = (example, example, example)
            continue
        if given is None:
            raise ValueError(f"{spec.name}.{name} has dynamic axes {dyn} but no entry in "
                             "spec.shape_profiles (TensorRT needs min/opt/max shapes)")
        lo, opt, hi = (tuple(int(d) for d in s) for s in given)
        if not len(lo) == len(opt) == len(hi) == len(example):
            raise ValueError(f"{spec.name}.{name}: profile ranks {len(lo)}/{len(opt)}/{len(hi)} "
                             f"!= input rank {len(example)}")
        for axis, size in enumerate(example):
            a, b, c = lo[axis], opt[axis], hi[axis]
            if axis in dyn:
                if not 0 <= a <= b <= c or c == 0:
                    raise ValueError(f"{spec.name}.{name} axis {axis}: need 0 <= min <= opt <= "
                                     f"max, max > 0; got {a}, {b}, {c}")
                sym = dyn[axis]
                if symbol_ranges.setdefault(sym, (a, b, c)) != (a, b, c):
                    raise ValueError(f"{spec.name}: axis '{sym}' has range {(a, b, c)} at "
                                     f"{name} but {symbol_ranges[sym]} elsewhere")
            elif not a == b == c == size:
                raise ValueError(f"{spec.name}.{name} axis {axis} is static ({size}) but the "
                                 f"profile gives {a}, {b}, {c}")
        profiles[name] = (lo, opt, hi)
    return profiles


def check_input_shape(name: str, shape: tuple[int, ...], profile: ShapeProfile) -> None:
    lo, _, hi = profile
    if len(shape) != len(lo) or any(not a <= s <= c for a, s, c in zip(lo, shape, hi)):
        raise ValueError(f"input {name} has shape {tuple(shape)}, outside the engine's profile "
                         f"{tuple(lo)}..{tuple(hi)}")


@dataclass(frozen=True)
class TensorInfo:
    """One engine IO tensor as TensorRT describes it (shape has -1 on dynamic axes)."""
    name: str
    is_input: bool
    dtype: str                    # trt.DataType member name, e.g. "FLOAT"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Binding:
    name: str
    dtype: torch.dtype
    max_shape: tuple[int, ...]

    @property
    def max_numel(self) -> int:
        return math.prod(self.max_shape)


@dataclass(frozen=True)
class BindingPlan:
    inputs: tuple[Binding, ...]    # in spec.input_names order
    outputs: tuple[Binding, ...]   # in spec.output_names order


def binding_plan(spec: ModelSpec, infos: list[TensorInfo],
                 max_shapes: dict[str, tuple[int, ...]]) -> BindingPlan:
    """Buffers to allocate: one per IO tensor at its largest shape, ordered as the spec orders
    them. ``max_shapes`` holds inputs' profile maxima and the outputs' shapes that the context
    reports with all inputs set to those maxima."""
    by_name = {i.name: i for i in infos}
    eng_in = {i.name for i in infos if i.is_input}
    eng_out = {i.name for i in infos if not i.is_input}
    if eng_in != set(spec.input_names) or eng_out != set(spec.output_names):
        raise ValueError(f"{spec.name}: engine IO {sorted(eng_in)} -> {sorted(eng_out)} does not "
                         f"match the spec {spec.input_names} -> {spec.output_names}")

    def one(name: str) -> Binding:
        info = by_name[name]
        if info.dtype not in TRT_DTYPES:
            raise ValueError(f"{spec.name}.{name}: unsupported TensorRT dtype {info.dtype}")
        shape = tuple(int(d) for d in max_shapes[name])
        if len(shape) != len(info.shape) or any(d < 0 for d in shape):
            raise ValueError(f"{spec.name}.{name}: no finite max shape ({shape}); outputs whose "
                             "size depends on data are not supported")
        return Binding(name, TRT_DTYPES[info.dtype], shape)

    return BindingPlan(tuple(one(n) for n in spec.input_names),
                       tuple(one(n) for n in spec.output_names))


# ---------------------------------------------------------------- TensorRT calls

def build_serialized_engine(trt, onnx_bytes: bytes, profiles: dict[str, ShapeProfile],
                            precision: str, logger, workspace_bytes: int = 2 << 30) -> bytes:
    """ONNX bytes -> serialized engine bytes. ``profiles`` holds the inputs with dynamic axes
    only (a static network input takes no profile entry)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    builder = trt.Builder(logger)
    network = builder.create_network(0)    # TRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(serialized)


def engine_io(trt, engine) -> list[TensorInfo]:
    infos = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        infos.append(TensorInfo(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                engine.get_tensor_dtype(name).name,
                                tuple(engine.get_tensor_shape(name))))
    return infos


class TrtRunner:
    def __init__(self, spec: ModelSpec, device: str = "cuda", cache_dir=None,
                 precision: str = "fp16", workspace_gb: float = 2.0, onnx_path=None,
                 opset: int = 17, copy_outputs: bool = True) -> None:
        if device != "cuda":
            raise BackendUnavailable(f"TensorRT runs on CUDA only, not on '{device}'")
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT is installed but torch sees no CUDA device")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.spec, self.device, self.precision = spec, device, precision
        self.backend = "tensorrt"
        self.copy_outputs = copy_outputs
        from .onnx_export import export_onnx      # needs the onnx package; planning does not
        self.onnx_path = Path(onnx_path or export_onnx(spec, cache_subdir(cache_dir, "onnx"),
                                                       opset))
        onnx_bytes = self.onnx_path.read_bytes()
        self.profiles = derive_shape_profiles(
            spec, [tuple(t.shape) for t in spec.example_inputs()])

        dynamic_profiles = {n: p for n, p in self.profiles.items() if n in spec.dynamic_axes}
        self._logger = trt.Logger(trt.Logger.WARNING)
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        key = engine_cache_key(onnx_bytes, trt.__version__, props.name,
                               (props.major, props.minor), precision)
        self._runtime = trt.Runtime(self._logger)
        self.engine = EngineCache(cache_dir).get_or_build(
            key,
            build=lambda: build_serialized_engine(trt, onnx_bytes, dynamic_profiles, precision,
                                                  self._logger, int(workspace_gb * (1 << 30))),
            deserialize=self._runtime.deserialize_cuda_engine,
            prefix=f"{spec.name}-{precision}")
        self.context = self.engine.create_execution_context()

        # Output sizes at the profile's maxima fix the buffer sizes once and for all.
        for name in spec.input_names:
            self.context.set_input_shape(name, self.profiles[name][2])
        max_shapes = {n: self.profiles[n][2] for n in spec.input_names}
        for name in spec.output_names:
            max_shapes[name] = tuple(self.context.get_tensor_shape(name))
        self.plan = binding_plan(spec, engine_io(trt, self.engine), max_shapes)
        self._buffers = {}
        for b in self.plan.inputs + self.plan.outputs:
            buf = torch.empty(b.max_numel, dtype=b.dtype, device="cuda")
            self._buffers[b.name] = buf
            if not self.context.set_tensor_address(b.name, buf.data_ptr()):
                raise RuntimeError(f"TensorRT rejected the buffer address of {b.name}")
        self._shapes = dict(max_shapes)   # input shapes currently set on the context

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.plan.inputs):
            raise TypeError(f"{self.spec.name} takes {len(self.plan.inputs)} inputs, "
                            f"got {len(inputs)}")
        for b, t in zip(self.plan.inputs, inputs):
            shape = tuple(t.shape)
            check_input_shape(b.name, shape, self.profiles[b.name])
            if t.dtype != b.dtype:
                raise TypeError(f"{self.spec.name}.{b.name}: dtype {t.dtype}, engine wants "
                                f"{b.dtype}")
            self._buffers[b.name][:t.numel()].view(shape).copy_(t)
            if self._shapes[b.name] != shape:
                if not self.context.set_input_shape(b.name, shape):
                    raise RuntimeError(f"TensorRT rejected shape {shape} for {b.name}")
                self._shapes[b.name] = shape
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.spec.name} failed")
        outs = []
        for b in self.plan.outputs:
            shape = tuple(self.context.get_tensor_shape(b.name))
            view = self._buffers[b.name][:math.prod(shape)].view(shape)
            outs.append(view.clone() if self.copy_outputs else view)
        return tuple(outs)

