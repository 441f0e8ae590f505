"""Train the motion GNN on the project's own synthetic sequences and evaluate it on held-out seeds.

Data: every (preset, seed) is rendered (``sirenpose_ros.synth``) and run through the real
``Pipeline`` (KLT frontend, and for ``--xfeat-train-seeds`` also the XFeat frontend; window
estimator) with a recording scorer around the
``GeometricScorer``, so the training inputs are exactly what the scorer sees at run time. Labels
come from the ground-truth motion mask at each keypoint (dynamic = mask > 0); an edge is rigid
when both ends lie on the same object (both static counts as rigid). Rendered frames and
recordings are cached (``--cache``), keyed by a hash of the synth / tracking-path source: a change
to the frontend, window, graph or pipeline re-records (seconds per sequence), a change to the
synthetic scenes re-renders. Training is deterministic for a given seed and data (CPU, one thread).

Evaluation on the held-out seeds, per preset: node precision / recall / F1 at 0.5 and edge
accuracy of the per-frame scorer output (GNN vs GeometricScorer on the same observations), and of
the pipeline's filtered ``dynamic_prob`` with each scorer driving its own pipeline run.

Example (the command that produced the shipped weights, see models/MOTION_GNN.md):
    python -m sirenpose_ros.tools.train_motion_gnn --seed 0 --out models/motion_gnn.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from sirenpose_ros.core.config import make_config
from sirenpose_ros.core.graph import GeometricScorer, GraphObservation
from sirenpose_ros.core.motion_gnn import (EDGE_FEATURES, NODE_FEATURES, GNNScorer, MotionFeatures,
                                           MotionGNN, default_weights_path, save_weights)
from sirenpose_ros.core.pipeline import Pipeline
from sirenpose_ros.synth.presets import PRESETS

DATA_VERSION = 1             # bump when the recording format or the pipeline inputs change
AMBIGUOUS_WEIGHT = 0.25      # loss weight of keypoints whose 5x5 neighbourhood mixes objects
EDGE_LOSS_WEIGHT = 0.5


FRONTENDS = ("klt", "xfeat")


def pipeline_config(frontend: str = "klt"):
    # The dense stages (SIREN field, cloud) come after the graph and never feed back into it.
    # The recordings run the GeometricScorer (run_pipeline swaps the scorer in anyway).
    return make_config({"field_enabled": False, "cloud_enabled": False, "pipeline_frontend": frontend,
                        "graph_scorer": "geometric"})


class RecordingScorer:
    """Wraps a scorer and keeps a copy of every GraphObservation it is asked about."""

    def __init__(self, inner):
        self.inner = inner
        self.observations: list[GraphObservation] = []

    def __call__(self, obs):
        self.observations.append(GraphObservation(obs.ids.copy(), np.asarray(obs.px, np.float64).copy(),
                                                  obs.residual_px.copy(), obs.edges.copy(),
                                                  obs.previous.copy()))
        return self.inner(obs)


def run_pipeline(gray, stamps, camera, scorer=None, frontend="klt"):
    """Run a fresh Pipeline over gray frames; -> (recorded observations, per-frame results)."""
    from sirenpose_ros.core.types import Frame
    cfg = pipeline_config(frontend)
    pipe = Pipeline(cfg)
    rec = RecordingScorer(scorer if scorer is not None else GeometricScorer(cfg))
    pipe.graph.scorer = rec       # Pipeline builds its KeypointGraph itself; the scorer is swappable
    results = []
    for i in range(gray.shape[0]):
        results.append(pipe.process(Frame(int(stamps[i]), gray[i], None, camera)))
    assert len(rec.observations) == len(results), "the graph must be scored once per frame"
    return rec.observations, results, pipe


def working_size(width, height, cfg):
    """The pipeline's processing resolution for an input size (it downscales wide images)."""
    s = min(1.0, cfg.pipeline_max_image_width / width)
    return (width, height) if s >= 1.0 else (int(round(width * s)), int(round(height * s)))


def keypoint_labels(px_work, work_size, mask):
    """Object id (0 static) and boundary ambiguity at working-resolution keypoints in a GT mask."""
    H, W = mask.shape
    w, h = work_size
    u = np.rint((px_work[:, 0] + 0.5) * W / w - 0.5).astype(np.int64).clip(0, W - 1)
    v = np.rint((px_work[:, 1] + 0.5) * H / h - 0.5).astype(np.int64).clip(0, H - 1)
    k = np.ones((5, 5), np.uint8)
    lo, hi = cv2.erode(mask, k), cv2.dilate(mask, k)
    return mask[v, u], lo[v, u] != hi[v, u]


def source_fingerprint(modules) -> str:
    """Short hash of the source of the given modules (cache keys, weight metadata)."""
    h = hashlib.sha1()
    for name in modules:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:10]


# Everything between the image and the GraphObservation: when any of it changes, recordings are
# stale (the scorer would see other inputs than it was trained on) and are redone.
TRACKING_MODULES = tuple("sirenpose_ros.core." + m for m in
                         ("camera", "frontend", "geometry", "graph", "pipeline", "window", "config", "params",
                          "learned", "xfeat_frontend"))
SYNTH_MODULES = tuple("sirenpose_ros.synth." + m for m in ("presets", "render", "scene", "sequence", "texture"))
# Taken once, right after the modules were imported: the code this process runs. (Other people
# may edit the files while a run goes on; hashing them later would key recordings wrongly.)
TRACKING_SOURCE = source_fingerprint(TRACKING_MODULES)
SYNTH_SOURCE = source_fingerprint(SYNTH_MODULES)


def _load_or_make(path: Path, make):
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.npz")    # atomic: an interrupted run leaves no bad cache
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def rendered(preset, seed, n_frames, width, height, cache: Path):
    """Gray frames, GT motion masks, K and stamps of a synthetic sequence (cached by synth source)."""
    def make():
        from sirenpose_ros.synth import render_sequence
        seq = render_sequence(preset, seed, n_frames, width, height)
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in seq.rgb])
        return dict(gray=gray, mask=seq.mask, K=seq.K, stamps=seq.stamps_ns)
    key = f"render_{preset}_s{seed}_{width}x{height}_{n_frames}f_{SYNTH_SOURCE}"
    return _load_or_make(cache / f"{key}.npz", make)


def weights_fingerprint(path) -> str:
    """Short hash of a weight file's tensors (not its metadata, whose order safetensors does not fix)."""
    from safetensors.torch import load_file
    h = hashlib.sha1()
    for k, v in sorted(load_file(str(path)).items()):
        h.update(k.encode()); h.update(v.numpy().tobytes())
    return h.hexdigest()[:10]


def record(preset, seed, n_frames, width, height, cache: Path, frontend: str = "klt",
           loop_weights: str | None = None):
    """Run the pipeline over a rendered sequence once and keep every frame's GraphObservation with
    labels; cached by the tracking path's source, so a change to the frontend, window or graph
    redoes it. The rendered frames are merged into the result.

    The GeometricScorer drives the pipeline, or with ``loop_weights`` a motion GNN: at run time
    the GNN's own beliefs decide which tracks keep a residual (a track judged dynamic has none
    until it looks static again), feed the pose and seed the pose-free fits, so the
    observations it sees differ from those of a geometric run; these recordings show the network
    the states its own mistakes lead to."""
    seq = rendered(preset, seed, n_frames, width, height, cache)

    def make():
        scorer = GNNScorer(pipeline_config(frontend), weights=loop_weights) if loop_weights else None
        obs, results, pipe = run_pipeline(seq["gray"], seq["stamps"], _camera_from(seq), scorer, frontend=frontend)
        work = working_size(width, height, pipe.cfg)
        d = {k: [] for k in ("ids", "px", "res", "prev", "obj", "amb", "geo_p", "edges")}
        n_nodes, n_edges, tracking = [], [], []
        for i, (o, r) in enumerate(zip(obs, results)):
            obj, amb = keypoint_labels(o.px, work, seq["mask"][i])
            d["ids"].append(o.ids); d["px"].append(o.px); d["res"].append(o.residual_px)
            d["prev"].append(o.previous); d["obj"].append(obj); d["amb"].append(amb)
            d["geo_p"].append(r.dynamic_prob); d["edges"].append(o.edges.reshape(-1, 2))
            n_nodes.append(o.ids.shape[0]); n_edges.append(o.edges.shape[0])
            tracking.append(r.state.value == "tracking")
        out = {k: np.concatenate(v) for k, v in d.items()}
        out.update(n_nodes=np.array(n_nodes), n_edges=np.array(n_edges), tracking=np.array(tracking),
                   work_size=np.array(work))
        return out
    loop = f"_gnn{weights_fingerprint(loop_weights)}" if loop_weights else ""
    key = (f"rec_{preset}_s{seed}_{width}x{height}_{n_frames}f_{frontend}{loop}_v{DATA_VERSION}_"
           f"{TRACKING_SOURCE}")
    return dict(_load_or_make(cache / f"{key}.npz", make), **seq, frontend=frontend)


def frames_of(rec):
    """Split a recording into per-frame GraphObservations plus labels."""
    no = np.concatenate([[0], np.cumsum(rec["n_nodes"])])
    eo = np.concatenate([[0], np.cumsum(rec["n_edges"])])
    for f in range(rec["n_nodes"].shape[0]):
        a, b, c, e = no[f], no[f + 1], eo[f], eo[f + 1]
        obs = GraphObservation(rec["ids"][a:b], rec["px"][a:b], rec["res"][a:b], rec["edges"][c:e],
                               rec["prev"][a:b])
        yield obs, rec["obj"][a:b], rec["amb"][a:b], rec["geo_p"][a:b]


def build_graphs(rec):
    """Per-frame training graphs: features computed exactly as GNNScorer computes them."""
    feats = MotionFeatures()
    graphs = []
    for obs, obj, amb, geo_p in frames_of(rec):
        x, ea, informed = feats(obs)
        e = obs.edges.reshape(-1, 2)
        graphs.append(dict(x=x, ea=ea, edges=e, y=(obj > 0).astype(np.float32),
                           w=np.where(amb, AMBIGUOUS_WEIGHT, 1.0).astype(np.float32),
                           ye=(obj[e[:, 0]] == obj[e[:, 1]]).astype(np.float32), obs=obs, geo_p=geo_p))
    return graphs


def collate(graphs, device):
    xs, eas, es, ys, ws, yes = [], [], [], [], [], []
    off = 0
    for g in graphs:
        xs.append(g["x"]); eas.append(g["ea"]); es.append(g["edges"] + off)
        ys.append(g["y"]); ws.append(g["w"]); yes.append(g["ye"])
        off += g["x"].shape[0]
    t = lambda a, dt=torch.float32: torch.from_numpy(np.concatenate(a)).to(device=device, dtype=dt)
    return (t(xs), t(es, torch.int64).reshape(-1, 2), t(eas).reshape(-1, EDGE_FEATURES), t(ys), t(ws), t(yes))


def train(graphs, args, device):
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = MotionGNN(NODE_FEATURES, EDGE_FEATURES, args.hidden, args.layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-5)
    steps = args.epochs * int(np.ceil(len(graphs) / args.batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    graphs = [g for g in graphs if g["x"].shape[0] > 0]
    history = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(graphs))
        tot, cnt = 0.0, 0
        model.train()
        for s in range(0, len(order), args.batch):
            x, e, ea, y, w, ye = collate([graphs[i] for i in order[s:s + args.batch]], device)
            node, edge = model(x, e, ea)
            loss = (F.binary_cross_entropy_with_logits(node, y, weight=w, reduction="sum") / w.sum())
            if e.shape[0]:
                loss = loss + EDGE_LOSS_WEIGHT * F.binary_cross_entropy_with_logits(edge, ye)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * x.shape[0]
            cnt += x.shape[0]
        history.append(tot / max(cnt, 1))
        if epoch % 5 == 0 or epoch == args.epochs - 1:
            print(f"  epoch {epoch:3d} loss {history[-1]:.4f}", flush=True)
    return model.eval(), history


def prf(p, y):
    """Precision, recall, F1 of p >= 0.5 against boolean labels y (NaN p counts as static)."""
    pred = np.nan_to_num(p, nan=0.0) >= 0.5
    tp = float(np.sum(pred & y)); fp = float(np.sum(pred & ~y)); fn = float(np.sum(~pred & y))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return dict(precision=round(prec, 4), recall=round(rec, 4), f1=round(f1, 4), n=int(y.size),
                n_dynamic=int(y.sum()))


def edge_accuracy(r, ye):
    if ye.size == 0:
        return dict(accuracy=float("nan"), n=0)
    pred = np.nan_to_num(r, nan=0.5) >= 0.5
    non = ~ye
    return dict(accuracy=round(float(np.mean(pred == ye)), 4),
                nonrigid_recall=round(float(np.mean(~pred[non])), 4) if non.any() else None,
                n=int(ye.size), n_nonrigid=int(non.sum()))


@torch.inference_mode()
def evaluate_sequence(model, rec, cfg, device, weights):
    """Per-frame scores (GNN vs Geometric on the same observations) and both pipelines' outputs."""
    graphs = build_graphs(rec)
    geo = GeometricScorer(cfg)
    out = {k: [] for k in ("y", "ye", "gnn", "geo", "gnn_e", "geo_e", "geo_pipe")}
    for g in graphs:
        if g["x"].shape[0] == 0:
            continue
        node, edge = model(torch.from_numpy(g["x"]).to(device), torch.from_numpy(g["edges"]).to(device),
                           torch.from_numpy(g["ea"]).to(device))
        pg, rg = geo(g["obs"])
        out["y"].append(g["y"] > 0.5); out["ye"].append(g["ye"] > 0.5)
        out["gnn"].append(torch.sigmoid(node).cpu().numpy()); out["gnn_e"].append(torch.sigmoid(edge).cpu().numpy())
        out["geo"].append(pg); out["geo_e"].append(rg); out["geo_pipe"].append(g["geo_p"])
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
    # The GNN driving its own pipeline run (its outputs change the pose and hence the residuals).
    scorer = GNNScorer(cfg, weights=weights, device=str(device))
    obs, results, pipe = run_pipeline(rec["gray"], rec["stamps"], _camera_from(rec), scorer, rec["frontend"])
    ys, ps = [], []
    for f, (o, r) in enumerate(zip(obs, results)):
        obj, _ = keypoint_labels(o.px, tuple(rec["work_size"]), rec["mask"][f])
        ys.append(obj > 0); ps.append(r.dynamic_prob)
    cat["gnn_pipe_y"] = np.concatenate(ys) if ys else np.zeros(0, bool)
    cat["gnn_pipe"] = np.concatenate(ps) if ps else np.zeros(0)
    cat["gnn_tracking_frames"] = int(sum(r.state.value == "tracking" for r in results))
    return cat


def _camera_from(rec):
    from sirenpose_ros.core.camera import CameraModel
    K, (h, w) = rec["K"], rec["gray"].shape[1:]
    return CameraModel.pinhole(w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2])



def size_for(seed: int, sizes):
    return sizes[seed % len(sizes)]


def parse_size(s: str):
    w, h = s.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train_motion_gnn", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="torch/NumPy seed of the training run")
    ap.add_argument("--out", required=True, help="output weight file (.safetensors)")
    ap.add_argument("--metrics", default="", help="metrics JSON (default: <out without suffix>.metrics.json in --cache)")
    ap.add_argument("--cache", default="/work/notes/gnn_data", help="cache of rendered/recorded sequences")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--train-seeds", nargs="+", type=int, default=[2, 3, 4, 5, 6, 8],
                    help="KLT training seeds (0 and 1 are left out: the accuracy benchmark runs them)")
    ap.add_argument("--test-seeds", nargs="+", type=int, default=[100, 101])
    ap.add_argument("--xfeat-train-seeds", nargs="*", type=int, default=[2],
                    help="seeds also recorded with the XFeat frontend for training (XFeat is slow on a CPU: "
                         "the default takes the 320x240 ones); none = KLT tracks only")
    ap.add_argument("--loop-seeds", nargs="*", type=int, default=[],
                    help="KLT seeds recorded once more with the motion GNN of --loop-weights driving "
                         "the pipeline instead of the GeometricScorer (its own closed loop)")
    ap.add_argument("--loop-weights", default="",
                    help="weights of the in-the-loop GNN for --loop-seeds ('' = the shipped file)")
    ap.add_argument("--xfeat-test-seeds", nargs="*", type=int, default=[],
                    help="held-out seeds also evaluated with the XFeat frontend")
    ap.add_argument("--frames", type=int, default=60, help="frames per sequence (30 fps)")
    ap.add_argument("--sizes", nargs="+", default=["320x240", "640x480"],
                    help="render sizes; sequence seed s uses sizes[s %% len(sizes)]")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8, help="frames (graphs) per batch")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    args = ap.parse_args(argv)
    if (set(args.train_seeds) | set(args.xfeat_train_seeds) | set(args.loop_seeds)) & (set(args.test_seeds) | set(args.xfeat_test_seeds)):
        ap.error("train and test seeds must differ")
    sizes = [parse_size(s) for s in args.sizes]
    cache = Path(args.cache)
    device = torch.device(args.device)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cpu":
        # Graphs are small: with several threads on a busy 2-core machine the threads mostly wait
        # on each other (measured 20x slower per step than one thread).
        torch.set_num_threads(1)
    cfg = pipeline_config()
    t0 = time.perf_counter()

    graphs, data_stats = [], {}
    loop_weights = args.loop_weights or str(default_weights_path())
    train_runs = ([("klt", s, None) for s in args.train_seeds] + [("xfeat", s, None) for s in args.xfeat_train_seeds]
                  + [("klt", s, loop_weights) for s in args.loop_seeds])
    for preset in args.presets:
        for frontend, s, lw in train_runs:
            w, h = size_for(s, sizes)
            rec = record(preset, s, args.frames, w, h, cache, frontend, lw)
            g = build_graphs(rec)
            graphs += g
            data_stats[f"{preset}/{s}/{frontend}{'/gnn-loop' if lw else ''}"] = dict(size=f"{w}x{h}", frames=len(g),
                                               nodes=int(sum(x["x"].shape[0] for x in g)),
                                               dynamic_share=round(float(np.mean(np.concatenate([x["y"] for x in g]))), 4))
    t_data = time.perf_counter() - t0
    n_nodes = sum(g["x"].shape[0] for g in graphs)
    print(f"training data: {len(graphs)} frames, {n_nodes} nodes ({t_data:.0f} s incl. rendering)", flush=True)

    t1 = time.perf_counter()
    model, history = train(graphs, args, device)
    t_train = time.perf_counter() - t1
    n_params = sum(p.numel() for p in model.parameters())
    out = Path(args.out)
    save_weights(model, out, {"train_seed": args.seed, "presets": ",".join(args.presets),
                              "train_seeds": ",".join(map(str, args.train_seeds)),
                              "xfeat_train_seeds": ",".join(map(str, args.xfeat_train_seeds)),
                              "loop_seeds": ",".join(map(str, args.loop_seeds)),
                              "frames": args.frames, "sizes": ",".join(args.sizes), "epochs": args.epochs,
                              "tracking_source": TRACKING_SOURCE})
    print(f"trained {n_params} parameters in {t_train:.0f} s -> {out} ({out.stat().st_size} bytes)", flush=True)

    metrics = dict(tracking_source=TRACKING_SOURCE, command=" ".join(["python -m sirenpose_ros.tools.train_motion_gnn"] + (argv if argv is not None else sys.argv[1:])),
                   n_params=n_params, weight_bytes=out.stat().st_size, train_frames=len(graphs),
                   train_nodes=n_nodes, data_seconds=round(t_data, 1), train_seconds=round(t_train, 1),
                   loss_history=[round(x, 5) for x in history], train_data=data_stats)
    if not args.no_eval:
        t2 = time.perf_counter()
        for frontend, seeds in (("klt", args.test_seeds), ("xfeat", args.xfeat_test_seeds)):
            if seeds:
                key = "held_out" if frontend == "klt" else f"held_out_{frontend}"
                metrics[key] = evaluate(model, args, seeds, sizes, cache, cfg, device, out, frontend)
        metrics["eval_seconds"] = round(time.perf_counter() - t2, 1)
    mpath = Path(args.metrics) if args.metrics else cache / (out.stem + ".metrics.json")
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"metrics -> {mpath}; total {time.perf_counter() - t0:.0f} s")
    return 0


def evaluate(model, args, seeds, sizes, cache, cfg, device, out, frontend):
    """Held-out scores per preset and pooled, for the tracks of one frontend."""
    per, pooled = {}, {}
    for preset in args.presets:
        parts = []
        for s in seeds:
            w, h = size_for(s, sizes)
            parts.append(evaluate_sequence(model, record(preset, s, args.frames, w, h, cache, frontend),
                                           cfg, device, str(out)))
        c = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "gnn_tracking_frames"}
        per[preset] = summarise(c)
        per[preset]["gnn_pipeline_tracking_frames"] = int(sum(p["gnn_tracking_frames"] for p in parts))
        for k, v in c.items():
            pooled.setdefault(k, []).append(v)
        print(f"{frontend:5s} {preset:14s} F1 per-frame gnn {per[preset]['frame_gnn']['f1']:.3f} geo {per[preset]['frame_geo']['f1']:.3f}"
              f" | pipeline gnn {per[preset]['pipeline_gnn']['f1']:.3f} geo {per[preset]['pipeline_geo']['f1']:.3f}"
              f" | edge acc gnn {per[preset]['edge_gnn']['accuracy']:.3f} geo {per[preset]['edge_geo']['accuracy']:.3f}",
              flush=True)
    a = summarise({k: np.concatenate(v) for k, v in pooled.items()})
    print(f"{frontend:5s} {'all':14s} F1 per-frame gnn {a['frame_gnn']['f1']:.3f} geo {a['frame_geo']['f1']:.3f}"
          f" | pipeline gnn {a['pipeline_gnn']['f1']:.3f} geo {a['pipeline_geo']['f1']:.3f}"
          f" | edge acc gnn {a['edge_gnn']['accuracy']:.3f} geo {a['edge_geo']['accuracy']:.3f}", flush=True)
    return dict(frontend=frontend, seeds=list(seeds), sizes={s: "x".join(map(str, size_for(s, sizes))) for s in seeds},
                per_preset=per, all=a)


def summarise(c):
    return dict(frame_gnn=prf(c["gnn"], c["y"]), frame_geo=prf(c["geo"], c["y"]),
                pipeline_gnn=prf(c["gnn_pipe"], c["gnn_pipe_y"]), pipeline_geo=prf(c["geo_pipe"], c["y"]),
                edge_gnn=edge_accuracy(c["gnn_e"], c["ye"]), edge_geo=edge_accuracy(c["geo_e"], c["ye"]))


if __name__ == "__main__":
    sys.exit(main())
