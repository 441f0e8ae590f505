"""Export every known network to ONNX into a folder, check it, and print sizes and hashes.

Each file is named ``<spec name>-<weights id>-op<opset>.onnx`` (the same names the runtime
cache uses), passes ``onnx.checker``, and with ``--verify`` is run once through ONNX Runtime
against the torch module on the spec's example inputs. ``--bench N`` also times torch and ONNX
Runtime on the CPU (median of N calls after two warm-up calls, default thread counts).

Example:
    python -m sirenpose_ros.tools.export_models --out /tmp/onnx --xfeat-sizes 320x224,640x480 \
        --lighterglue-top-k 512,1024 --verify --bench 10
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time

import torch

from ..inference.onnx_export import DEFAULT_OPSET, export_onnx
from ..inference.runtime import ModelSpec, TorchRunner


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'320x224,640x480' -> [(320, 224), (640, 480)] as (width, height)."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        w, h = part.lower().split("x")
        sizes.append((int(w), int(h)))
    return sizes


def known_specs(xfeat_sizes: list[tuple[int, int]], lighterglue_top_k: list[int],
                candidate_factor: float = 2.0) -> list[tuple[str, ModelSpec]]:
    """(label, spec) of the project's networks. LighterGlue has fixed padded sizes, one file per
    ``xfeat_top_k`` (pool 2 x top_k against ceil(top_k x candidate_factor) candidates, as the
    frontend builds it). Add a spec here when a new network gets one (motion GNN)."""
    from ..core import learned
    specs = [(f"xfeat {w}x{h}", learned.xfeat_spec(h, w)) for w, h in xfeat_sizes]
    for k in lighterglue_top_k:
        m, n = learned.lighterglue_sizes(k, candidate_factor)
        specs.append((f"lighterglue {m}x{n}", learned.lighterglue_spec(None, m, n)))
    return specs


def rel_error(spec: ModelSpec, torch_runner, ort_runner) -> float:
    """Largest |ORT - torch| / max |torch| over the outputs, on the spec's example inputs."""
    inputs = spec.example_inputs()
    ref, got = torch_runner(*inputs), ort_runner(*inputs)
    return max(float((g - r).abs().max() / r.abs().max().clamp_min(1e-12))
               for g, r in zip(got, ref))


def median_ms(runner, inputs, repeats: int) -> float:
    """Median wall time of one call; on CUDA synchronised, so it is the call's full latency."""
    sync = torch.cuda.synchronize if runner.device == "cuda" else (lambda: None)
    for _ in range(2):
        runner(*inputs)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        runner(*inputs)
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_cuda(spec: ModelSpec, repeats: int) -> str:
    """Median ms of the CUDA backends that run here (TensorRT fp16, torch, torch + CUDA graphs)."""
    from ..inference import BACKENDS, BackendUnavailable
    inputs = tuple(t.cuda() for t in spec.example_inputs())
    parts = []
    for name in ("tensorrt", "torch", "torch-cudagraph"):
        try:
            runner = BACKENDS[name](spec, "cuda")
        except BackendUnavailable as exc:
            parts.append(f"{name} n/a ({str(exc).split(';')[0][:40]})")
            continue
        parts.append(f"{name} {median_ms(runner, inputs, repeats):.2f}")
    return "cuda median ms: " + "  ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sirenpose-export-models", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the .onnx files")
    ap.add_argument("--xfeat-sizes", default="320x224,640x480",
                    help="XFeat network input sizes WxH (multiples of 32), comma separated")
    ap.add_argument("--lighterglue-top-k", default="512",
                    help="xfeat_top_k values to export LighterGlue for, comma separated (its "
                         "padded sizes follow from top_k and --candidate-factor)")
    ap.add_argument("--candidate-factor", type=float, default=2.0,
                    help="xfeat_candidate_factor the LighterGlue sizes are derived with")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--force", action="store_true", help="re-export even if the file exists")
    ap.add_argument("--verify", action="store_true", help="compare ONNX Runtime with torch")
    ap.add_argument("--bench", type=int, default=0, metavar="N",
                    help="time torch and ONNX Runtime on the CPU (median of N calls)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch and ONNX Runtime (0: their defaults)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    failures = 0
    top_ks = [int(p) for p in args.lighterglue_top_k.split(",") if p.strip()]
    print(f"{'model':24s} {'MB':>6s} {'sha256':16s} {'s':>5s}  file")
    for label, spec in known_specs(parse_sizes(args.xfeat_sizes), top_ks, args.candidate_factor):
        t0 = time.perf_counter()
        try:
            path = export_onnx(spec, args.out, opset=args.opset, force=args.force)
        except Exception as exc:
            failures += 1
            print(f"{label:24s} FAILED: {type(exc).__name__}: {exc}")
            continue
        data = path.read_bytes()
        print(f"{label:24s} {len(data) / 1e6:6.2f} {hashlib.sha256(data).hexdigest()[:16]} "
              f"{time.perf_counter() - t0:5.1f}  {path}")
        if args.verify or args.bench:
            from ..inference.ort_runner import OrtRunner
            torch_runner = TorchRunner(spec, "cpu")
            ort_runner = OrtRunner(spec, "cpu", onnx_path=path, threads=args.threads)
            if args.verify:
                print(f"{'':24s} ort vs torch: max rel err {rel_error(spec, torch_runner, ort_runner):.1e}")
            if args.bench:
                inputs = spec.example_inputs()
                t_torch = median_ms(torch_runner, inputs, args.bench)
                t_ort = median_ms(ort_runner, inputs, args.bench)
                print(f"{'':24s} cpu median ms: torch {t_torch:7.1f}  onnxruntime {t_ort:7.1f}  "
                      f"(x{t_torch / t_ort:.2f}, threads {args.threads or 'default'})")
                if torch.cuda.is_available():
                    print(f"{'':24s} {bench_cuda(spec, args.bench)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
