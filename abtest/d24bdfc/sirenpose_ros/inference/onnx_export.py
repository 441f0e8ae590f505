"""Export a :class:`ModelSpec` to ONNX, checked and cached by (name, weights, opset).

Exporter choice (torch 2.13): the torch.export-based exporter (``dynamo=True``, the default)
needs ``onnxscript``, which is not installed here, so this uses the TorchScript exporter
(``dynamo=False``). It traces the module with the spec's example inputs; axes named in
``spec.dynamic_axes`` stay symbolic, everything else is fixed at the example's size. Tracing
bakes Python control flow in, which is why the parity tests run two different sizes through
every dynamic axis.
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from .cache import atomic_write_bytes, cache_subdir
from .runtime import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def state_dict_hash(module: torch.nn.Module) -> str:
    """sha256 over parameter/buffer names and bytes: identifies weights when a spec has none."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def onnx_file_name(spec: ModelSpec, weights_id: str, opset: int) -> str:
    return f"{spec.name}-{weights_id[:16]}-op{opset}.onnx"


def check_onnx(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """ONNX checker plus the spec's contract: graph IO names in the spec's order."""
    onnx.checker.check_model(model)
    ins = tuple(i.name for i in model.graph.input)
    outs = tuple(o.name for o in model.graph.output)
    if ins != tuple(spec.input_names) or outs != tuple(spec.output_names):
        raise ValueError(f"{spec.name}: ONNX graph IO {ins} -> {outs} does not match the spec "
                         f"{spec.input_names} -> {spec.output_names}")


def _validate_spec(spec: ModelSpec) -> None:
    names = set(spec.input_names) | set(spec.output_names)
    unknown = set(spec.dynamic_axes) - names
    if unknown:
        raise ValueError(f"{spec.name}: dynamic_axes name unknown tensors {sorted(unknown)}")


# ---------------------------------------------------------------- exporter fixes
# torch 2.13's TorchScript exporter normalises a negative ``dim`` of ``aten::repeat_interleave``
# with an in-place ``dim += rank`` on the *constant's own tensor*. Tracing pools equal constants,
# so every other ``-1`` in the graph silently becomes ``rank - 1`` of that one tensor. kornia's
# LightGlue positional encoding (``repeat_interleave(2, dim=-1)`` on a 5-D tensor) turns later
# ``unflatten(-1, ...)``/``transpose(-2, -1)`` into dim 4 and the export fails (or, with other
# ranks, would export wrong axes). The wrapper hands the stock symbolic a private copy of dim.

def _const_ints(value) -> list[int] | None:
    """The integer(s) of a constant graph value, or None when it is not an integer constant."""
    node = value.node()
    if node.kind() not in ("prim::Constant", "onnx::Constant") or not node.hasAttribute("value"):
        return None
    kind = node.kindOf("value")
    if kind == "i":
        return [node.i("value")]
    if kind == "t":
        return [int(v) for v in node.t("value").reshape(-1).tolist()]
    return None


def _repeat_interleave_private_dim(g, input, repeats, dim=None, output_size=None):
    from torch.onnx import symbolic_opset13     # the stock symbolic (opset 13+)
    d = _const_ints(dim) if dim is not None else None
    if d is not None and len(d) == 1:
        dim = g.op("Constant", value_t=torch.tensor(d[0], dtype=torch.int64))
    return symbolic_opset13.repeat_interleave(g, input, repeats, dim, output_size)


_EXPORT_FIXES = {"aten::repeat_interleave": _repeat_interleave_private_dim}


def export_bytes(spec: ModelSpec, module: torch.nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """Serialized, checked ONNX model of ``module`` traced on ``spec.example_inputs()``."""
    _validate_spec(spec)
    inputs = tuple(spec.example_inputs())
    buf = io.BytesIO()
    # The fixes are registered for this export only: torch's symbolic registry is process-wide.
    for name, fn in _EXPORT_FIXES.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    # Tracing runs the module once on small example inputs; one thread is enough, and on a busy
    # 2-core machine OpenMP barrier contention made small ops ~100x slower with two threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The deprecation notice about the legacy exporter is expected (module docstring).
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(module, inputs, buf, dynamo=False, opset_version=opset,
                              input_names=list(spec.input_names),
                              output_names=list(spec.output_names),
                              dynamic_axes={k: dict(v) for k, v in spec.dynamic_axes.items()},
                              do_constant_folding=True)
    finally:
        torch.set_num_threads(threads)
        for name in _EXPORT_FIXES:
            torch.onnx.unregister_custom_op_symbolic(name, opset)
    data = buf.getvalue()
    check_onnx(onnx.load_from_string(data), spec)
    return data


def export_onnx(spec: ModelSpec, out_dir=None, opset: int = DEFAULT_OPSET,
                force: bool = False) -> Path:
    """Path of the checked ONNX file for ``spec`` in ``out_dir`` (default: the cache's ``onnx``
    folder). An existing file with the same name (spec name + weights id + opset) that loads and
    passes the checker is reused without building the module; a broken one is re-exported."""
    out_dir = Path(out_dir) if out_dir is not None else cache_subdir(None, "onnx")
    module = None
    weights_id = spec.weights_id
    if not weights_id:   # no declared id: hash the weights themselves so the name stays honest
        module = spec.build().eval()
        weights_id = state_dict_hash(module)
    path = out_dir / onnx_file_name(spec, weights_id, opset)
    if path.is_file() and not force:
        try:
            check_onnx(onnx.load(str(path)), spec)
            log.debug("onnx export: reusing %s", path)
            return path
        except Exception as exc:
            log.warning("onnx export: cached %s is unusable (%s); exporting again", path, exc)
    if module is None:
        module = spec.build().eval()
    data = export_bytes(spec, module.cpu(), opset)
    atomic_write_bytes(path, data)
    log.info("onnx export: wrote %s (%.2f MB)", path, len(data) / 1e6)
    return path
