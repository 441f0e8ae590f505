"""ONNX Runtime runner: the CPU fast path (and CUDA where an onnxruntime-gpu build exists).

Inputs are bound by pointer through IO binding, so a contiguous CPU torch tensor reaches ORT
without a copy; ORT allocates the outputs (their shapes can depend on the inputs' dynamic axes)
and they come back as torch tensors that share the ORT-owned numpy memory, again without a copy.
Each call returns fresh output tensors, so results can be kept across calls (the descriptors of
the previous frame, for instance).
"""
from __future__ import annotations

import numpy as np
import torch

from .cache import cache_subdir
from .onnx_export import DEFAULT_OPSET, export_onnx
from .runtime import BackendUnavailable, ModelSpec

# ONNX Runtime's type strings for the tensor types these models use.
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8, "tensor(bool)": np.bool_,
}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc}); "
                                 "use backend='torch'") from exc
    return onnxruntime


def providers_for(device: str, available: list[str]) -> list[str]:
    """Execution providers for ``device``; CUDA only with the CUDA provider, never a silent
    fallback to the CPU (a 'cuda' runner must not quietly run on the CPU)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable("onnxruntime has no CUDAExecutionProvider here "
                                     f"(providers: {available})")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"unknown device '{device}'")


class OrtRunner:
    def __init__(self, spec: ModelSpec, device: str = "cpu", cache_dir=None, onnx_path=None,
                 opset: int = DEFAULT_OPSET, threads: int = 0) -> None:
        ort = import_onnxruntime()
        self.spec = spec
        self.device = device
        self.backend = f"onnxruntime-{device}"
        providers = providers_for(device, ort.get_available_providers())
        self.onnx_path = onnx_path or export_onnx(spec, cache_subdir(cache_dir, "onnx"), opset)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads          # 0: ORT's default (one per physical core)
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=providers)
        self._in_dtypes = []      # (numpy dtype for ORT, torch dtype for the check)
        for meta, name in zip(self.session.get_inputs(), spec.input_names):
            if meta.name != name or meta.type not in _ORT_TO_NUMPY:
                raise ValueError(f"{spec.name}: ONNX input {meta.name} ({meta.type}) does not "
                                 f"match spec input {name}")
            np_dtype = _ORT_TO_NUMPY[meta.type]
            self._in_dtypes.append((np_dtype, torch.from_numpy(np.empty(0, np_dtype)).dtype))
        self._binding = self.session.io_binding()
        self._ort_device = "cuda" if device == "cuda" else "cpu"

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.spec.input_names):
            raise TypeError(f"{self.spec.name} takes {len(self.spec.input_names)} inputs, "
                            f"got {len(inputs)}")
        keep = []      # contiguous inputs must stay alive until the run returns
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, t, (np_dtype, dtype) in zip(self.spec.input_names, inputs, self._in_dtypes):
            if t.device.type != self._ort_device:
                raise ValueError(f"{self.spec.name}.{name} is on {t.device}, runner device is "
                                 f"{self.device}")
            if t.dtype != dtype:
                raise TypeError(f"{self.spec.name}.{name}: dtype {t.dtype}, model wants {dtype}")
            t = t.detach().contiguous()
            keep.append(t)
            b.bind_input(name, self._ort_device, 0, np_dtype, tuple(t.shape), t.data_ptr())
        for name in self.spec.output_names:
            b.bind_output(name, "cpu")     # ORT allocates (shape follows the inputs)
        if self.device == "cuda":          # ORT's CUDA stream must see torch's finished inputs
            torch.cuda.current_stream().synchronize()
        self.session.run_with_iobinding(b)
        outs = tuple(torch.from_numpy(v.numpy()) for v in b.get_outputs())
        del keep
        if self.device == "cuda":
            outs = tuple(o.to("cuda", non_blocking=True) for o in outs)
        return outs

