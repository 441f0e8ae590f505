"""Inference runtimes: ONNX export + cache, ONNX Runtime parity with torch (fixed and dynamic
shapes, the real XFeat/LighterGlue specs), backend selection and errors, the engine cache, and
the CPU-testable parts of the TensorRT runner (shape profiles, binding plan, the TensorRT 10 API
call sequence against a recording fake module). CUDA parts skip without a GPU."""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from sirenpose_ros.inference import (BackendUnavailable, ModelSpec, TorchCudaGraphRunner,
                                     TorchRunner, make_runner)
from sirenpose_ros.inference import cache as cache_mod
from sirenpose_ros.inference import trt_runner as trt_mod

HAS_ONNX = importlib.util.find_spec("onnx") is not None
HAS_ORT = HAS_ONNX and importlib.util.find_spec("onnxruntime") is not None
HAS_CUDA = torch.cuda.is_available()
FP32_REL_TOL = 1e-4      # max |backend - torch| / max |torch|, fp32 end to end


def rel_err(got, ref) -> float:
    return max(float((g.float().cpu() - r.float().cpu()).abs().max()
                     / r.float().cpu().abs().max().clamp_min(1e-12)) for g, r in zip(got, ref))


# ----------------------------------------------------------------------------- test networks

class ConvNet(nn.Module):
    """Fixed-size image in, a dense map and a pooled vector out."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, image):
        x = torch.relu(self.a(image))
        dense = torch.sigmoid(self.b(x))
        return dense, x.mean(dim=(2, 3))


class SetNet(nn.Module):
    """A point set with a dynamic count N: per-point MLP, soft neighbourhood aggregation
    (softmax over an N x N distance matrix, i.e. a dense graph) and a pooled global vector."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(3 + 8, 32), nn.ReLU(), nn.Linear(32, 32))
        self.head = nn.Linear(64, 4)

    def forward(self, points, feats):
        h = self.embed(torch.cat([points, feats], -1))                  # (1, N, 32)
        d2 = ((points[:, :, None] - points[:, None]) ** 2).sum(-1)       # (1, N, N)
        msg = torch.softmax(-d2, dim=-1) @ h
        out = self.head(torch.cat([h, msg], -1))                        # (1, N, 4)
        return out, h.max(dim=1).values                                  # (1, 32)


def conv_spec(counter=None) -> ModelSpec:
    def build():
        if counter is not None:
            counter.append(1)
        torch.manual_seed(1)
        return ConvNet()
    return ModelSpec("test_convnet", build, lambda: (torch.rand(1, 3, 32, 48),),
                     ("image",), ("dense", "pooled"), weights_id="conv-seed1")


def set_spec(seed: int = 2, weights_id: str = "set-seed2") -> ModelSpec:
    def build():
        torch.manual_seed(seed)
        return SetNet()
    return ModelSpec(
        "test_setnet", build, lambda: (torch.randn(1, 50, 3), torch.randn(1, 50, 8)),
        ("points", "feats"), ("per_point", "pooled"),
        dynamic_axes={"points": {1: "n"}, "feats": {1: "n"}, "per_point": {1: "n"}},
        weights_id=weights_id,
        shape_profiles={"points": ((1, 1, 3), (1, 64, 3), (1, 256, 3)),
                        "feats": ((1, 1, 8), (1, 64, 8), (1, 256, 8))})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("inference_cache")


# ----------------------------------------------------------------------------- ONNX export

needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx not installed")


@needs_onnx
def test_export_checks_names_and_reuses_cached_file(cache_dir, caplog):
    import onnx
    from sirenpose_ros.inference.onnx_export import export_onnx, onnx_file_name
    builds = []
    spec = conv_spec(builds)
    path = export_onnx(spec, cache_dir / "onnx")
    assert path.name == onnx_file_name(spec, "conv-seed1", 17) == "test_convnet-conv-seed1-op17.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["dense", "pooled"]
    assert model.opset_import[0].version == 17
    assert len(builds) == 1
    mtime = path.stat().st_mtime_ns
    assert export_onnx(spec, cache_dir / "onnx") == path      # cache hit: no build, no rewrite
    assert len(builds) == 1 and path.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    path.write_bytes(b"not an onnx file")                      # corrupt -> re-exported
    with caplog.at_level(logging.WARNING):
        assert export_onnx(spec, cache_dir / "onnx") == path
    assert "unusable" in caplog.text and len(builds) == 2
    onnx.checker.check_model(onnx.load(str(path)))


@needs_onnx
def test_missing_weights_id_is_derived_from_the_weights(tmp_path):
    from sirenpose_ros.inference.onnx_export import export_onnx, state_dict_hash
    a = set_spec(seed=2, weights_id="")
    b = set_spec(seed=3, weights_id="")
    ha, hb = state_dict_hash(a.build()), state_dict_hash(b.build())
    assert ha != hb and ha == state_dict_hash(a.build())
    pa, pb = export_onnx(a, tmp_path), export_onnx(b, tmp_path)
    assert pa != pb and ha[:16] in pa.name and hb[:16] in pb.name


class RepeatThenTranspose(nn.Module):
    """The pattern of kornia's LightGlue that trips torch's TorchScript exporter: a negative-dim
    repeat_interleave on a 5-D tensor, then another op with dim -1 on a lower-rank tensor."""

    def forward(self, a, b):
        e = a[:, None, :, None, :].repeat_interleave(2, dim=-1)
        return e.sum(1).squeeze(2), b.transpose(-2, -1) * 2


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_export_fix_keeps_pooled_negative_dims_intact(tmp_path):
    from sirenpose_ros.inference import onnx_export
    from sirenpose_ros.inference.ort_runner import OrtRunner
    spec = ModelSpec("rep", RepeatThenTranspose, lambda: (torch.randn(1, 6, 4), torch.randn(1, 5, 3)),
                     ("a", "b"), ("e", "bt"), dynamic_axes={"a": {1: "n"}, "e": {1: "n"}},
                     weights_id="none")
    saved = dict(onnx_export._EXPORT_FIXES)
    onnx_export._EXPORT_FIXES.clear()
    try:        # the stock exporter rewrites the shared -1 constant to 4 and fails
        with pytest.raises(IndexError):
            onnx_export.export_bytes(spec, RepeatThenTranspose())
    finally:
        onnx_export._EXPORT_FIXES.update(saved)
    runner = OrtRunner(spec, "cpu", tmp_path)
    a, b = torch.randn(1, 9, 4), torch.randn(1, 5, 3)
    got, want = runner(a, b), RepeatThenTranspose()(a, b)
    assert [tuple(g.shape) for g in got] == [(1, 9, 8), (1, 3, 5)]
    assert all(torch.equal(g, w) for g, w in zip(got, want))


# ----------------------------------------------------------------------------- ONNX Runtime

@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_ort_matches_torch_on_a_fixed_size_conv_net(cache_dir):
    spec = conv_spec()
    ort_runner = make_runner(spec, "onnxruntime", "cpu", cache_dir)
    ref = TorchRunner(spec, "cpu")
    assert ort_runner.backend == "onnxruntime-cpu" and ort_runner.device == "cpu"
    x = torch.rand(1, 3, 32, 48) * 4 - 1                 # random, not the export example
    got, want = ort_runner(x), ref(x)
    assert [tuple(g.shape) for g in got] == [(1, 4, 16, 24), (1, 8)]
    assert all(g.dtype == torch.float32 and g.device.type == "cpu" for g in got)
    assert rel_err(got, want) < FP32_REL_TOL
    with pytest.raises(TypeError):
        ort_runner(x.double())


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_ort_dynamic_point_counts_through_one_session(cache_dir):
    spec = set_spec()
    runner = make_runner(spec, "onnxruntime", "cpu", cache_dir)
    ref = TorchRunner(spec, "cpu")
    session = runner.session
    g = torch.Generator().manual_seed(5)
    kept = []
    for n in (17, 203):                                  # neither is the export's 50
        pts, feats = torch.randn(1, n, 3, generator=g), torch.randn(1, n, 8, generator=g)
        got = runner(pts, feats)
        assert runner.session is session
        assert tuple(got[0].shape) == (1, n, 4) and tuple(got[1].shape) == (1, 32)
        assert rel_err(got, ref(pts, feats)) < FP32_REL_TOL
        kept.append((got, ref(pts, feats)))
    # Outputs of an earlier call are not overwritten by a later one.
    assert rel_err(*kept[0]) < FP32_REL_TOL


@pytest.mark.skipif(not HAS_ORT or HAS_CUDA, reason="needs onnxruntime and no CUDA device")
def test_auto_picks_onnxruntime_on_cpu_and_says_why(cache_dir, caplog):
    with caplog.at_level(logging.INFO, logger="sirenpose_ros.inference"):
        runner = make_runner(conv_spec(), cache_dir=cache_dir)
    assert runner.backend == "onnxruntime-cpu"
    assert "onnxruntime-cpu" in caplog.text and "no CUDA device" in caplog.text


@needs_onnx
def test_auto_falls_back_to_torch_when_onnxruntime_is_missing(cache_dir, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)     # import onnxruntime -> ImportError
    with caplog.at_level(logging.INFO, logger="sirenpose_ros.inference"):
        runner = make_runner(conv_spec(), device="cpu", cache_dir=cache_dir)
    assert runner.backend == "torch-cpu"
    assert "onnxruntime is not installed" in caplog.text
    with pytest.raises(BackendUnavailable, match="onnxruntime is not installed"):
        make_runner(conv_spec(), "onnxruntime", "cpu", cache_dir)


def test_unavailable_backends_raise_clear_errors(cache_dir):
    with pytest.raises(ValueError, match="unknown"):
        make_runner(conv_spec(), "openvino", "cpu", cache_dir)
    with pytest.raises(BackendUnavailable, match="CUDA only"):
        make_runner(conv_spec(), "tensorrt", "cpu", cache_dir)
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
            make_runner(conv_spec(), "tensorrt", "cuda", cache_dir)
    if not HAS_CUDA:
        with pytest.raises(BackendUnavailable, match="CUDA"):
            make_runner(conv_spec(), "torch-cudagraph", "cuda", cache_dir)
    if HAS_CUDA:
        with pytest.raises(BackendUnavailable, match="static shapes"):
            TorchCudaGraphRunner(set_spec(), "cuda")


def test_package_imports_without_onnx_onnxruntime_tensorrt():
    code = ("import sys\n"
            "for m in ('onnx', 'onnxruntime', 'tensorrt'): sys.modules[m] = None\n"
            "import sirenpose_ros.inference as inf\n"
            "assert {'torch', 'onnxruntime', 'tensorrt', 'torch-cudagraph'} <= set(inf.BACKENDS)\n"
            "try:\n"
            "    inf.make_runner(None, 'tensorrt', 'cuda')\n"
            "except inf.BackendUnavailable as e:\n"
            "    print('unavailable:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert "unavailable:" in out.stdout


# ----------------------------------------------------------------------------- engine cache

def test_engine_cache_key_covers_every_dependency():
    base = dict(onnx_bytes=b"graph", trt_version="10.7.0", gpu_name="NVIDIA H100",
                compute_capability=(9, 0), precision="fp16")
    k = cache_mod.engine_cache_key(**base)
    assert k == cache_mod.engine_cache_key(**base) and len(k) == 64
    for field, other in [("onnx_bytes", b"graph2"), ("trt_version", "10.8.0"),
                         ("gpu_name", "NVIDIA H200"), ("compute_capability", (8, 9)),
                         ("precision", "fp32")]:
        assert cache_mod.engine_cache_key(**{**base, field: other}) != k, field


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "x.engine"
    cache_mod.atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        cache_mod.atomic_write_bytes(path, "not bytes")      # the write itself fails
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.engine"]


def test_engine_cache_builds_once_then_hits_and_rebuilds_corrupt_files(tmp_path, caplog):
    cache = cache_mod.EngineCache(tmp_path)
    assert cache.dir == tmp_path / "engines"
    builds = []

    def build():
        builds.append(1)
        return b"ENGINE:ok"

    def deserialize(data):          # stands in for trt.Runtime.deserialize_cuda_engine
        if data.startswith(b"ENGINE:"):
            return ("engine", data)
        if data == b"raise":
            raise RuntimeError("bad magic")
        return None

    assert cache.get_or_build("k1", build, deserialize, "net") == ("engine", b"ENGINE:ok")
    assert cache.get_or_build("k1", build, deserialize, "net") == ("engine", b"ENGINE:ok")
    assert len(builds) == 1
    path = cache.path("k1", "net")
    for junk in (b"truncated", b"raise"):
        path.write_bytes(junk)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert cache.get_or_build("k1", build, deserialize, "net")[0] == "engine"
        assert "unusable" in caplog.text and "rebuilding" in caplog.text
        assert path.read_bytes() == b"ENGINE:ok"
    assert len(builds) == 3
    with pytest.raises(RuntimeError, match="does not deserialize"):
        cache.get_or_build("k2", lambda: b"garbage", deserialize, "net")
    assert not cache.path("k2", "net").exists()


# ----------------------------------------------------------------------------- TensorRT planning

def test_shape_profiles_from_spec():
    spec = set_spec()
    prof = trt_mod.derive_shape_profiles(spec, [(1, 50, 3), (1, 50, 8)])
    assert prof["points"] == ((1, 1, 3), (1, 64, 3), (1, 256, 3))
    static = trt_mod.derive_shape_profiles(conv_spec(), [(1, 3, 32, 48)])
    assert static["image"] == ((1, 3, 32, 48),) * 3

    def bad(**profiles):
        return dataclasses.replace(spec, shape_profiles={**spec.shape_profiles, **profiles})

    cases = [
        (dataclasses.replace(spec, shape_profiles={}), "no entry"),
        (bad(feats=((1, 1, 8), (1, 64, 8), (1, 300, 8))), "range"),          # N disagrees
        (bad(feats=((1, 1, 9), (1, 64, 9), (1, 256, 9))), "static"),         # channel changed
        (bad(feats=((1, 80, 8), (1, 64, 8), (1, 256, 8))), "min <= opt"),
        (bad(feats=((1, 1), (1, 64), (1, 256))), "rank"),
    ]
    for s, msg in cases:
        with pytest.raises(ValueError, match=msg):
            trt_mod.derive_shape_profiles(s, [(1, 50, 3), (1, 50, 8)])
    trt_mod.check_input_shape("points", (1, 256, 3), prof["points"])
    with pytest.raises(ValueError, match="outside"):
        trt_mod.check_input_shape("points", (1, 257, 3), prof["points"])


def test_binding_plan_orders_buffers_as_the_spec():
    spec = set_spec()
    infos = [trt_mod.TensorInfo("pooled", False, "FLOAT", (1, 32)),
             trt_mod.TensorInfo("feats", True, "FLOAT", (1, -1, 8)),
             trt_mod.TensorInfo("per_point", False, "HALF", (1, -1, 4)),
             trt_mod.TensorInfo("points", True, "FLOAT", (1, -1, 3))]
    maxes = {"points": (1, 256, 3), "feats": (1, 256, 8), "per_point": (1, 256, 4),
             "pooled": (1, 32)}
    plan = trt_mod.binding_plan(spec, infos, maxes)
    assert [b.name for b in plan.inputs] == ["points", "feats"]
    assert [b.name for b in plan.outputs] == ["per_point", "pooled"]
    assert plan.outputs[0].dtype == torch.float16 and plan.outputs[0].max_numel == 1024
    with pytest.raises(ValueError, match="data"):
        trt_mod.binding_plan(spec, infos, {**maxes, "per_point": (1, -1, 4)})
    with pytest.raises(ValueError, match="does not match"):
        trt_mod.binding_plan(spec, infos[:3], maxes)
    with pytest.raises(ValueError, match="dtype"):
        trt_mod.binding_plan(spec, [dataclasses.replace(infos[0], dtype="FP8")] + infos[1:],
                             maxes)


class _Enum:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def fake_tensorrt(calls: list, parse_ok: bool = True, build_ok: bool = True, version="10.7.0"):
    """A recording stand-in for the ``tensorrt`` module with only the TensorRT 10 Python names
    this runner is documented to use (Builder, OnnxParser, builder config, optimisation profile,
    Runtime, tensor IO enums). Any other attribute access fails, which is the point: it checks
    which API is called and in what order; it builds and runs nothing."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = _Enum("WARNING")

        def __init__(self, level):
            calls.append(("Logger", level.name))

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("config.set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            calls.append(("config.set_flag", flag.name))

        def add_optimization_profile(self, profile):
            calls.append(("config.add_optimization_profile",))
            return 0

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("builder.create_network", flags))
            return "network"

        def create_builder_config(self):
            calls.append(("builder.create_builder_config",))
            return Config()

        def create_optimization_profile(self):
            calls.append(("builder.create_optimization_profile",))
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("builder.build_serialized_network", network))
            return bytearray(b"SERIALIZED") if build_ok else None

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            calls.append(("OnnxParser", network))

        def parse(self, data):
            calls.append(("parser.parse", len(data)))
            return parse_ok

        def get_error(self, i):
            return "unsupported node Foo"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=_Enum("WORKSPACE"))
    trt.BuilderFlag = types.SimpleNamespace(FP16=_Enum("FP16"))
    trt.TensorIOMode = types.SimpleNamespace(INPUT=_Enum("INPUT"), OUTPUT=_Enum("OUTPUT"))
    return trt


def test_tensorrt_build_follows_the_tensorrt10_api_sequence():
    calls = []
    trt = fake_tensorrt(calls)
    logger = trt.Logger(trt.Logger.WARNING)
    spec = set_spec()
    prof = trt_mod.derive_shape_profiles(spec, [(1, 50, 3), (1, 50, 8)])
    data = trt_mod.build_serialized_engine(trt, b"onnx-bytes", prof, "fp16", logger, 1 << 30)
    assert data == b"SERIALIZED"
    assert [c[0] for c in calls] == [
        "Logger", "Builder", "builder.create_network", "OnnxParser", "parser.parse",
        "builder.create_builder_config", "config.set_memory_pool_limit", "config.set_flag",
        "builder.create_optimization_profile", "profile.set_shape", "profile.set_shape",
        "config.add_optimization_profile", "builder.build_serialized_network"]
    assert ("builder.create_network", 0) in calls                     # explicit batch (TRT 10)
    assert ("config.set_flag", "FP16") in calls
    assert ("profile.set_shape", "feats", (1, 1, 8), (1, 64, 8), (1, 256, 8)) in calls

    calls.clear()                                                       # static net, fp32
    trt_mod.build_serialized_engine(trt, b"x", {}, "fp32", logger)
    names = [c[0] for c in calls]
    assert "config.set_flag" not in names and "builder.create_optimization_profile" not in names

    with pytest.raises(RuntimeError, match="unsupported node Foo"):
        trt_mod.build_serialized_engine(fake_tensorrt([], parse_ok=False), b"x", {}, "fp16", logger)
    with pytest.raises(RuntimeError, match="failed to build"):
        trt_mod.build_serialized_engine(fake_tensorrt([], build_ok=False), b"x", {}, "fp16", logger)
    with pytest.raises(ValueError, match="precision"):
        trt_mod.build_serialized_engine(trt, b"x", {}, "int4", logger)


def test_engine_io_and_version_check_with_a_fake_module(monkeypatch):
    calls = []
    trt = fake_tensorrt(calls)

    class Engine:               # the ICudaEngine tensor API names of TensorRT 10
        num_io_tensors = 2
        _io = [("points", trt.TensorIOMode.INPUT, "FLOAT", (1, -1, 3)),
               ("per_point", trt.TensorIOMode.OUTPUT, "HALF", (1, -1, 4))]

        def get_tensor_name(self, i):
            return self._io[i][0]

        def get_tensor_mode(self, name):
            return dict((n, m) for n, m, _, _ in self._io)[name]

        def get_tensor_dtype(self, name):
            return _Enum(dict((n, d) for n, _, d, _ in self._io)[name])

        def get_tensor_shape(self, name):
            return dict((n, s) for n, _, _, s in self._io)[name]

    infos = trt_mod.engine_io(trt, Engine())
    assert infos == [trt_mod.TensorInfo("points", True, "FLOAT", (1, -1, 3)),
                     trt_mod.TensorInfo("per_point", False, "HALF", (1, -1, 4))]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    assert trt_mod.import_tensorrt() is trt
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], version="8.6.1"))
    with pytest.raises(BackendUnavailable, match="TensorRT 10"):
        trt_mod.import_tensorrt()


# ----------------------------------------------------------------------------- torch on CUDA

@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_torch_cuda_and_cuda_graph_match_torch_cpu():
    spec = conv_spec()
    cpu = TorchRunner(spec, "cpu")
    cuda = make_runner(spec, "torch", "cuda")
    graph = make_runner(spec, "torch-cudagraph", "cuda")
    assert graph.backend == "torch-cudagraph"
    first = None
    for seed in (0, 1):
        x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(seed)) * 3 - 1
        want = cpu(x)
        assert rel_err(cuda(x.cuda()), want) < FP32_REL_TOL
        got = graph(x.cuda())
        assert all(g.device.type == "cuda" for g in got)
        assert rel_err(got, want) < FP32_REL_TOL
        first = first or (got, want)
    assert rel_err(*first) < FP32_REL_TOL          # replay did not overwrite earlier results
    with pytest.raises(ValueError, match="captured"):
        graph(torch.rand(1, 3, 16, 16, device="cuda"))
    set_ref, set_cuda = TorchRunner(set_spec(), "cpu"), make_runner(set_spec(), "torch", "cuda")
    pts, feats = torch.randn(1, 77, 3), torch.randn(1, 77, 8)
    assert rel_err(set_cuda(pts.cuda(), feats.cuda()), set_ref(pts, feats)) < FP32_REL_TOL


@pytest.mark.skipif(not HAS_CUDA or importlib.util.find_spec("tensorrt") is not None,
                    reason="needs CUDA without TensorRT")
def test_auto_on_cuda_without_tensorrt(caplog):
    with caplog.at_level(logging.INFO, logger="sirenpose_ros.inference"):
        static = make_runner(conv_spec())
        dynamic = make_runner(set_spec())
    assert static.backend == "torch-cudagraph" and dynamic.backend == "torch-cuda"
    assert "TensorRT is not installed" in caplog.text


# ----------------------------------------------------------------------------- real networks

def _learned():
    try:
        from sirenpose_ros.core import learned
        learned.wheel_weights_dir()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"learned specs unavailable: {exc}")
    return learned


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_xfeat_onnxruntime_matches_torch(cache_dir):
    learned = _learned()
    spec = learned.xfeat_spec(224, 320)
    runner = make_runner(spec, "onnxruntime", "cpu", cache_dir)
    x = torch.rand(1, 1, 224, 320, generator=torch.Generator().manual_seed(7))
    got, want = runner(x), TorchRunner(spec, "cpu")(x)
    assert [tuple(g.shape) for g in got] == [(1, 64, 28, 40), (1, 65, 28, 40), (1, 1, 28, 40)]
    assert rel_err(got, want) < FP32_REL_TOL


def _masked_lg_inputs(spec, m: int, n: int, seed: int):
    """The spec's padded inputs with the first m / n slots valid and random padding content."""
    g = torch.Generator().manual_seed(seed)
    k0, d0, _, k1, d1, _ = spec.example_inputs()
    k0, k1 = torch.rand(k0.shape, generator=g) * 2 - 1, torch.rand(k1.shape, generator=g) * 2 - 1
    d0 = torch.nn.functional.normalize(torch.randn(d0.shape, generator=g), dim=-1)
    d1 = torch.nn.functional.normalize(torch.randn(d1.shape, generator=g), dim=-1)
    mask0 = (torch.arange(k0.shape[1]) < m).float()[None]
    mask1 = (torch.arange(k1.shape[1]) < n).float()[None]
    return k0, d0, mask0, k1, d1, mask1


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_masked_lighterglue_onnxruntime_matches_torch(cache_dir):
    import onnx
    learned = _learned()
    spec = learned.lighterglue_spec(None, 64, 48)
    runner = make_runner(spec, "onnxruntime", "cpu", cache_dir)
    # One static graph: every input has fixed dimensions (no symbolic axes) and the masks.
    graph = onnx.load(str(runner.onnx_path)).graph
    dims = {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                     for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"kpts0": [1, 64, 2], "desc0": [1, 64, 64], "mask0": [1, 64],
                    "kpts1": [1, 48, 2], "desc1": [1, 48, 64], "mask1": [1, 48]}
    ref = TorchRunner(spec, "cpu")
    for m, n in ((40, 17), (64, 48), (0, 30), (5, 0)):
        inputs = _masked_lg_inputs(spec, m, n, seed=m + n)
        (got,), (want,) = runner(*inputs), ref(*inputs)
        assert tuple(got.shape) == (1, 64, 48)
        outside = torch.ones(64, 48, dtype=torch.bool)
        outside[:m, :n] = False
        assert (got[0][outside] <= learned.MASK_BIAS).all()
        if m and n:
            assert rel_err((got[0, :m, :n],), (want[0, :m, :n],)) < FP32_REL_TOL
            # What matching reads: the same best match wherever the reference is not a near tie.
            top2 = want[0, :m, :n].topk(2, dim=1).values
            clear = (top2[:, 0] - top2[:, 1]) > 1e-3
            assert clear.sum() > 0.9 * m
            assert torch.equal(got[0, :m, :n].argmax(1)[clear], want[0, :m, :n].argmax(1)[clear])
    # The CPU variant: the same masked network with symbolic point counts, run on leading rows.
    dyn = learned.lighterglue_spec(None, 64, 48, dynamic=True)
    assert trt_mod.derive_shape_profiles(dyn, [tuple(t.shape) for t in dyn.example_inputs()])["mask1"] == \
        ((1, 1), (1, 48), (1, 48))
    runner = make_runner(dyn, "onnxruntime", "cpu", cache_dir)
    for rows0, rows1, m, n in ((30, 48, 25, 48), (64, 11, 64, 9)):
        inputs = _masked_lg_inputs(spec, m, n, seed=rows0)
        trimmed = [t[:, :rows0] for t in inputs[:3]] + [t[:, :rows1] for t in inputs[3:]]
        (got,), (want,) = runner(*trimmed), ref(*inputs)
        assert tuple(got.shape) == (1, rows0, rows1)
        assert rel_err((got[0, :m, :n],), (want[0, :m, :n],)) < FP32_REL_TOL


def test_masked_lighterglue_is_static_for_cuda_graphs_and_tensorrt():
    """CPU-testable half of the CUDA path: the spec has no dynamic axes, so ``auto`` on CUDA tries
    TensorRT (one fixed profile, no optimisation-profile ranges) then CUDA graphs; the engine
    binds every input, masks included, at the padded sizes."""
    from sirenpose_ros.inference import auto_order
    learned = _learned()
    m, n = learned.lighterglue_sizes(512, 2.0)
    assert (m, n) == (1024, 1024) and learned.lighterglue_sizes(100, 1.5) == (200, 150)
    spec = learned.lighterglue_spec(None, m, n)
    assert not spec.dynamic_axes
    assert auto_order(spec, "cuda") == ("tensorrt", "torch-cudagraph", "torch")
    shapes = [tuple(t.shape) for t in spec.example_inputs()]
    assert shapes == [(1, m, 2), (1, m, 64), (1, m), (1, n, 2), (1, n, 64), (1, n)]
    prof = trt_mod.derive_shape_profiles(spec, shapes)
    assert all(lo == opt == hi for lo, opt, hi in prof.values())
    assert not {k: p for k, p in prof.items() if k in spec.dynamic_axes}     # static engine
    infos = [trt_mod.TensorInfo(name, True, "FLOAT", shape) for name, shape in zip(spec.input_names, shapes)]
    infos.append(trt_mod.TensorInfo("log_assignment", False, "FLOAT", (1, m, n)))
    plan = trt_mod.binding_plan(spec, infos, {**{k: p[2] for k, p in prof.items()}, "log_assignment": (1, m, n)})
    assert [b.name for b in plan.inputs] == ["kpts0", "desc0", "mask0", "kpts1", "desc1", "mask1"]
    assert plan.inputs[2].max_shape == (1, m) and plan.outputs[0].max_numel == m * n


class _RecordingRunner:
    """A torch runner that records what the matcher hands it (what a CUDA graph would replay)."""

    def __init__(self, spec):
        self.inner, self.spec, self.device, self.backend = TorchRunner(spec, "cpu"), spec, "cpu", "rec"
        self.calls = []

    def __call__(self, *inputs):
        self.calls.append([(t.data_ptr(), tuple(t.shape), t.dtype) for t in inputs])
        return self.inner(*inputs)


def test_matcher_feeds_one_set_of_fixed_buffers():
    """Whatever the keypoint counts, the matcher passes the same preallocated, padded tensors
    (fixed shapes and addresses: a captured CUDA graph can replay on them), and stale rows from
    a larger earlier call are masked."""
    learned = _learned()
    spec = learned.lighterglue_spec(None, 40, 32)
    rec = _RecordingRunner(spec)
    matcher = learned.LighterGlueMatcher(rec)
    g = torch.Generator().manual_seed(5)

    def kps(rows, valid):
        px = torch.rand(rows, 2, generator=g) * torch.tensor([320.0, 240.0])
        desc = torch.nn.functional.normalize(torch.randn(rows, 64, generator=g), dim=-1)
        return learned.Keypoints(px, px, torch.rand(rows, generator=g), desc,
                                 torch.arange(rows) < valid, (320, 240))

    results = []
    for (r0, v0), (r1, v1) in (((40, 40), (32, 32)), ((40, 12), (32, 30)), ((25, 25), (20, 7))):
        a, b = kps(r0, v0), kps(r1, v1)
        j, ok, _ = matcher.match(a, b, 0.0)
        assert j.shape == (r0,) and not ok[v0:].any()
        assert (j[ok] < v1).all()
        # The same matches as the unpadded network on the valid points alone.
        net = rec.inner.module
        la = net(learned.normalize_keypoints(a.px_net[:v0], a.net_size)[None], a.desc[:v0][None], torch.ones(1, v0),
                 learned.normalize_keypoints(b.px_net[:v1], b.net_size)[None], b.desc[:v1][None], torch.ones(1, v1))[0]
        j_ref, ok_ref, _ = learned.filter_assignment(la, 0.0, torch.ones(v0, dtype=torch.bool),
                                                     torch.ones(v1, dtype=torch.bool))
        assert torch.equal(ok[:v0], ok_ref) and torch.equal(j[:v0][ok_ref], j_ref[ok_ref])
        results.append(ok.sum())
    assert all(c == rec.calls[0] for c in rec.calls)
    assert [s for _, s, _ in rec.calls[0]] == [tuple(t.shape) for t in spec.example_inputs()]
    with pytest.raises(ValueError, match="built for"):
        matcher.match(kps(41, 41), kps(5, 5))
    # The dynamic (CPU) variant gets only the rows the caller says may be valid, same matches.
    dyn = _RecordingRunner(learned.lighterglue_spec(None, 40, 32, dynamic=True))
    dyn_matcher = learned.LighterGlueMatcher(dyn)
    a, b = kps(40, 23), kps(32, 32)
    j, ok, _ = matcher.match(a, b, 0.0)
    j2, ok2, _ = dyn_matcher.match(a, b, 0.0, rows0=23)
    assert [s for _, s, _ in dyn.calls[-1]] == [(1, 23, 2), (1, 23, 64), (1, 23), (1, 32, 2), (1, 32, 64), (1, 32)]
    assert ok2.shape == (40,) and torch.equal(ok, ok2) and torch.equal(j[ok], j2[ok2])
    assert not dyn_matcher.match(a, b, 0.0, rows0=0)[1].any()


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_masked_lighterglue_cuda_graph_matches_cpu():
    learned = _learned()
    spec = learned.lighterglue_spec(None, 256, 192)
    graph = make_runner(spec, "torch-cudagraph", "cuda")
    assert graph.backend == "torch-cudagraph"
    assert make_runner(spec, "auto", "cuda").backend in ("tensorrt", "torch-cudagraph")
    ref = TorchRunner(spec, "cpu")
    for m, n in ((256, 192), (100, 37), (0, 50)):
        inputs = _masked_lg_inputs(spec, m, n, seed=m)
        (got,), (want,) = graph(*(t.cuda() for t in inputs)), ref(*inputs)
        assert (got[0, m:] <= learned.MASK_BIAS).all() and (got[0, :, n:] <= learned.MASK_BIAS).all()
        if m and n:
            assert rel_err((got[0, :m, :n],), (want[0, :m, :n],)) < FP32_REL_TOL


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_frontend_on_cuda_graphs_tracks_like_cpu():
    """The whole learned frontend on CUDA (graph-captured networks, device-side bookkeeping)
    gives the CPU's tracks up to float rounding (cuDNN may use TF32, so compare positions and
    continuation counts, not ids: a swapped pair of near-equal scores renumbers later ids)."""
    import cv2
    import numpy as np
    from sirenpose_ros.core import xfeat_frontend as xf
    from sirenpose_ros.core.config import Config
    from sirenpose_ros.core.params import validate
    from sirenpose_ros.synth.sequence import render_sequence
    _learned()
    seq = render_sequence("easy", seed=0, n_frames=4, width=320, height=240)
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in seq.rgb]
    fronts = [xf.XFeatFrontend(Config(validate(xf.PARAMS, {"xfeat_device": dev, "xfeat_backend": be,
                                                           "xfeat_top_k": 256})))
              for dev, be in (("cpu", "torch"), ("cuda", "torch-cudagraph"))]
    assert {r.backend for r in fronts[1].runners} == {"torch-cudagraph"}
    for g in grays:
        a, b = (fe.track(g) for fe in fronts)
        assert len(a) == len(b) == 256
        d = np.linalg.norm(a.px[:, None] - b.px[None], axis=2).min(1)
        assert np.mean(d < 0.05) > 0.9
        assert abs(int((a.age > 0).sum()) - int((b.age > 0).sum())) <= 0.05 * len(a)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("matcher", ["lighterglue", "mnn"])
def test_frontend_frame_graph_tracks_like_eager_cuda_and_never_waits(matcher):
    """The whole frame as one CUDA graph gives the eager CUDA frontend's tracks (same kernels,
    same inputs: identical up to atomics' order), through a reset and a blank frame; a replay
    only queues work (the sync debug mode raises on any host wait before the tracks' copy)."""
    import cv2
    import numpy as np
    from sirenpose_ros.core import xfeat_frontend as xf
    from sirenpose_ros.core.config import Config
    from sirenpose_ros.core.params import validate
    from sirenpose_ros.synth.sequence import render_sequence
    _learned()
    seq = render_sequence("easy", seed=0, n_frames=6, width=320, height=240)
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in seq.rgb]
    mk = lambda graph: xf.XFeatFrontend(Config(validate(xf.PARAMS, {
        "xfeat_device": "cuda", "xfeat_backend": "auto", "xfeat_top_k": 256, "xfeat_matcher": matcher,
        "xfeat_cuda_graph": graph})))
    eager, graphed = mk(False), mk(True)
    assert graphed.frame_graph and not eager.frame_graph
    assert all(r.backend == "torch-cuda" for r in graphed.runners)
    frames = grays[:4] + [np.zeros_like(grays[0])] + grays[4:]
    for rnd in range(2):
        for g in frames:
            a, b = eager.track(g), graphed.track(g)
            assert len(a) == len(b)
            d = np.linalg.norm(a.px[:, None] - b.px[None], axis=2).min(1) if len(a) else np.zeros(0)
            assert np.mean(d < 1e-3) >= 0.99 if len(a) else True
            assert abs(int((a.age > 0).sum()) - int((b.age > 0).sum())) <= 0.01 * max(1, len(a))
        eager.reset(), graphed.reset()
    assert len(graphed._graphs) >= 1
    graphed.track(grays[0]), graphed.track(grays[1])
    det = graphed._detector(grays[2].shape)
    det.upload(grays[2])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            out = graphed._device_step(det, True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.is_cuda and int(out[-2]) > 128       # most tracks continue on the next frame


def test_export_tool_lists_masked_lighterglue_per_top_k():
    _learned()
    from sirenpose_ros.tools.export_models import known_specs
    specs = known_specs([(320, 224)], [512, 100], 1.5)
    assert [label for label, _ in specs] == ["xfeat 320x224", "lighterglue 1024x768", "lighterglue 200x150"]
    lg = specs[1][1]
    assert lg.name == "xfeat_lighterglue_masked_1024x768" and not lg.dynamic_axes
    assert [tuple(t.shape) for t in lg.example_inputs()][2::3] == [(1, 1024), (1, 768)]


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("matcher", ["lighterglue", "mnn"])
def test_frontend_detect_and_match_never_wait_for_the_gpu(matcher):
    """detect and match only queue work (torch's sync debug mode raises on any host wait); the
    frame's one wait is the copy of the tracks at the end of track()."""
    from sirenpose_ros.core import xfeat_frontend as xf
    from sirenpose_ros.core.config import Config
    from sirenpose_ros.core.params import validate
    _learned()
    import cv2
    from sirenpose_ros.synth.sequence import render_sequence
    g = cv2.cvtColor(render_sequence("easy", seed=0, n_frames=1, width=320, height=240).rgb[0], cv2.COLOR_RGB2GRAY)
    fe = xf.XFeatFrontend(Config(validate(xf.PARAMS, {"xfeat_device": "cuda", "xfeat_backend": "torch-cudagraph",
                                                      "xfeat_top_k": 128, "xfeat_matcher": matcher})))
    fe.track(g)
    fe.track(g)                          # runners built, graphs captured, tables made
    fe.detect(g, 256)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cand = fe.detect(g, 256)
        j, ok = fe.match(fe._pool, cand, fe._pool_count)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert int(ok.sum()) > 64            # the same frame again: most of the pool matches
