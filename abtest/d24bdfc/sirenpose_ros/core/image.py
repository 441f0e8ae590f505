"""Raw ``sensor_msgs/Image`` / ``CompressedImage`` fields -> NumPy (gray HxW uint8, rgb HxWx3 uint8).

ROS-free: the node passes ``msg.encoding, msg.width, msg.height, msg.step, msg.data,
msg.is_bigendian``. Bad input never crashes the caller: every problem raises
:class:`ImageDecodeError` (a ``ValueError``) whose message says what is wrong and what was expected,
so the node can log it, count it and drop the frame.

Zero copy where possible: ``msg.data`` (``array.array('B')``, ``bytes``, ``memoryview`` or a uint8
``np.ndarray``) is wrapped with ``np.frombuffer`` and rows are strided with ``step`` (rows may be
padded). For mono8 the returned gray image, and for rgb8 the returned rgb image, are *views* of
the message buffer: they may be read-only and, with padded rows, not C-contiguous. Copy before
writing into them. Every other output is a fresh contiguous array.

16-bit data (mono16, 16UC1, rgb16..., bayer_*16) is reduced to 8 bit by a fixed right shift
(``significant_bits - 8``, default 16 -> ``>> 8``, the same scaling cv_bridge uses) rather than a
per-frame contrast stretch. Why: the tracker and the scene field assume brightness constancy
between frames; a per-frame stretch changes the grey level of the same surface whenever the
frame's histogram changes (a bright object entering the view darkens everything else), which
breaks patch matching and photometric supervision, and it amplifies sensor noise in dark frames.
A fixed shift is deterministic, costs one strided copy, and for cameras that put 10/12-bit
samples LSB-aligned into 16-bit words the ``image_16bit_significant_bits`` parameter (e.g. 12)
picks the right shift instead of producing an almost black image.

YUV 4:2:2 (``yuv422`` = UYVY, ``yuv422_yuy2`` = YUYV) uses BT.601 limited range (Y 16..235), the
convention of V4L2 cameras and of OpenCV's 4:2:2 conversions. The gray image is always the
BT.601 luma of the decoded RGB (``cv2.COLOR_RGB2GRAY``), so it is the same for every encoding.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import cv2
import numpy as np

from sirenpose_ros.core.params import ParamSpec

PARAMS: list[ParamSpec] = [
    ParamSpec("image_16bit_significant_bits", 16,
              "Significant bits of 16-bit image samples (LSB-aligned). 16-bit data is reduced "
              "to 8 bit by a fixed right shift of (bits - 8); use e.g. 12 for a 12-bit sensor "
              "that publishes mono16 with values 0..4095.", min=8, max=16),
]

DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """The image message cannot be decoded; the message says what is wrong and what was expected."""


@dataclass(frozen=True)
class _Spec:
    kind: str            # 'mono' | 'rgb' | 'bgr' | 'rgba' | 'bgra' | 'yuv' | 'bayer'
    channels: int        # samples per pixel in the message buffer
    depth: int           # bytes per sample (1 or 2)
    cv_code: int | None = None    # cv2.cvtColor code to RGB (yuv, bayer)
    pattern: str = ""    # Bayer: top-left 2x2 in reading order ('rggb'); YUV: byte order ('uyvy')

    @property
    def bytes_per_pixel(self) -> int:
        return self.channels * self.depth


# OpenCV names a Bayer pattern after the 2x2 block starting at the *second* row and second
# column (legacy names BayerBG, BayerGB, ...), while ROS names it after the top-left 2x2 block.
# ROS 'rggb' is therefore OpenCV's legacy 'BayerBG'; OpenCV >= 4.x also has the unambiguous
# aliases COLOR_BayerRGGB2RGB (== COLOR_BayerBG2RGB), used here. test_image.py verifies the
# mapping by mosaicking a known RGB image and demosaicking it back.
_BAYER_CODES = {
    "rggb": cv2.COLOR_BayerRGGB2RGB,
    "bggr": cv2.COLOR_BayerBGGR2RGB,
    "gbrg": cv2.COLOR_BayerGBRG2RGB,
    "grbg": cv2.COLOR_BayerGRBG2RGB,
}


def _build_table() -> dict[str, _Spec]:
    t: dict[str, _Spec] = {
        "mono8": _Spec("mono", 1, 1), "8UC1": _Spec("mono", 1, 1),
        "mono16": _Spec("mono", 1, 2), "16UC1": _Spec("mono", 1, 2),
        "rgb8": _Spec("rgb", 3, 1), "bgr8": _Spec("bgr", 3, 1),
        "rgba8": _Spec("rgba", 4, 1), "bgra8": _Spec("bgra", 4, 1),
        "8UC3": _Spec("bgr", 3, 1),    # cv_bridge treats untyped 3-channel data as BGR
        "8UC4": _Spec("bgra", 4, 1),
        "rgb16": _Spec("rgb", 3, 2), "bgr16": _Spec("bgr", 3, 2),
        "rgba16": _Spec("rgba", 4, 2), "bgra16": _Spec("bgra", 4, 2),
        "yuv422": _Spec("yuv", 2, 1, cv2.COLOR_YUV2RGB_UYVY, "uyvy"),   # ROS: yuv422 is UYVY
        "uyvy": _Spec("yuv", 2, 1, cv2.COLOR_YUV2RGB_UYVY, "uyvy"),
        "yuv422_yuy2": _Spec("yuv", 2, 1, cv2.COLOR_YUV2RGB_YUY2, "yuyv"),
        "yuyv": _Spec("yuv", 2, 1, cv2.COLOR_YUV2RGB_YUY2, "yuyv"),
    }
    for pattern, code in _BAYER_CODES.items():
        t[f"bayer_{pattern}8"] = _Spec("bayer", 1, 1, code, pattern)
        t[f"bayer_{pattern}16"] = _Spec("bayer", 1, 2, code, pattern)
    return t


_TABLE = _build_table()
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_TABLE)
# ROS encodings are case-sensitive strings, but '8uc3' or 'RGB8' are unambiguous: accept them.
_LOOKUP = {name.lower(): spec for name, spec in _TABLE.items()}

# (code from the message's channel order to RGB, to GRAY)
_TO_RGB_GRAY = {
    "bgr": (cv2.COLOR_BGR2RGB, cv2.COLOR_BGR2GRAY),
    "rgba": (cv2.COLOR_RGBA2RGB, cv2.COLOR_RGBA2GRAY),
    "bgra": (cv2.COLOR_BGRA2RGB, cv2.COLOR_BGRA2GRAY),
}


def _spec_for(encoding: object) -> _Spec:
    if not isinstance(encoding, str):
        raise ImageDecodeError(f"image encoding must be a string, got {type(encoding).__name__}")
    spec = _LOOKUP.get(encoding.strip().lower())
    if spec is None:
        raise ImageDecodeError(f"unsupported image encoding {encoding!r}; supported: "
                               + ", ".join(SUPPORTED_ENCODINGS))
    return spec


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ImageDecodeError(f"image {name} must be an integer, got {value!r}")
    try:
        return operator.index(value)    # int, numpy integer; refuses floats and strings
    except TypeError:
        raise ImageDecodeError(f"image {name} must be an integer, got {value!r}") from None


def _as_bytes(data: object) -> np.ndarray:
    """A 1-D uint8 view of any buffer-like ``data`` (no copy for contiguous buffers)."""
    try:
        if isinstance(data, np.ndarray):
            if data.dtype.hasobject:
                raise TypeError
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        mv = memoryview(data)  # type: ignore[arg-type]
        if not mv.c_contiguous:
            mv = memoryview(mv.tobytes())
        return np.frombuffer(mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B"), np.uint8)
    except (TypeError, ValueError):
        raise ImageDecodeError(f"image data must be bytes-like (bytes, array.array, memoryview, "
                               f"np.ndarray), got {type(data).__name__}") from None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image size {width}x{height} is invalid; width and height must be > 0")
    if width * height > max_pixels:
        raise ImageDecodeError(f"image {width}x{height} has {width * height} pixels, more than the "
                               f"allowed maximum of {max_pixels}")


def _to_8bit(rows16: np.ndarray, is_bigendian: bool, significant_bits: int) -> np.ndarray:
    """(H, W*C*2) uint8 rows of 16-bit samples -> (H, W*C) uint8 (contiguous)."""
    shift = significant_bits - 8
    if shift == 8:
        # >> 8 is the sample's high byte: pick it with a strided view, one copy, no arithmetic.
        return np.ascontiguousarray(rows16[:, (0 if is_bigendian else 1)::2])
    words = rows16.view(">u2" if is_bigendian else "<u2")
    return np.minimum(words >> shift, 255).astype(np.uint8)


def decode_image(encoding: str, width: int, height: int, step: int, data,
                 is_bigendian: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                 significant_bits: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode raw ``sensor_msgs/Image`` fields to ``(gray HxW uint8, rgb HxWx3 uint8 | None)``.

    ``rgb`` is None for mono sources. ``significant_bits`` (8..16) sets the shift used to reduce
    16-bit samples to 8 bit (see the module docstring). Raises :class:`ImageDecodeError` on any
    invalid input.
    """
    spec = _spec_for(encoding)
    width, height, step = _as_int("width", width), _as_int("height", height), _as_int("step", step)
    _check_size(width, height, max_pixels)
    significant_bits = _as_int("significant_bits", significant_bits)
    if not 8 <= significant_bits <= 16:
        raise ImageDecodeError(f"significant_bits={significant_bits} is invalid; expected 8..16")
    row_bytes = width * spec.bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError(f"{encoding} image {width}x{height}: step {step} is smaller than "
                               f"width * {spec.bytes_per_pixel} bytes per pixel = {row_bytes}")
    if spec.kind == "yuv" and width % 2:
        raise ImageDecodeError(f"{encoding} image width {width} is odd; YUV 4:2:2 packs pixel "
                               "pairs and needs an even width")
    buf = _as_bytes(data)
    if buf.size == 0:
        raise ImageDecodeError(f"{encoding} image {width}x{height}: data is empty")
    if buf.size < step * height:
        raise ImageDecodeError(f"{encoding} image {width}x{height}: data has {buf.size} bytes, "
                               f"expected step * height = {step} * {height} = {step * height}")

    # (H, row_bytes) view: rows strided by `step`, padding skipped, nothing copied.
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    if spec.depth == 2:
        rows = _to_8bit(rows, bool(is_bigendian), significant_bits)
    try:
        return _convert(spec, rows.reshape(height, width, spec.channels))
    except cv2.error as exc:   # should not happen after the checks above; never crash the node
        raise ImageDecodeError(f"{encoding} image {width}x{height}: OpenCV conversion failed: "
                               f"{str(exc).strip().splitlines()[-1]}") from None


def _convert(spec: _Spec, img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) uint8 in the message's layout -> (gray, rgb | None)."""
    if spec.kind == "mono":
        return img[:, :, 0], None
    if spec.kind == "rgb":
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), img
    if spec.kind in _TO_RGB_GRAY:
        to_rgb, to_gray = _TO_RGB_GRAY[spec.kind]
        return cv2.cvtColor(img, to_gray), cv2.cvtColor(img, to_rgb)
    # yuv (H, W, 2) and bayer (H, W) go through OpenCV, gray from the result for consistency.
    src = img if spec.kind == "yuv" else img[:, :, 0]
    rgb = cv2.cvtColor(src, spec.cv_code)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), rgb


# ---------------------------------------------------------------------------------------------
# CompressedImage

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4 (DHT), C8 (JPG)
# and CC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data) -> tuple[int, int] | None:
    """(width, height) from a JPEG stream's frame header, or None (not JPEG / no header found).

    Why: OpenCV allocates the full frame a JPEG header claims before it reads the scan, so a
    600-byte stream claiming 20000x20000 costs seconds and GBs before any size check after
    decoding. Walks the marker segments only (a handful of jumps), never the entropy data.
    """
    try:
        buf = memoryview(data).cast("B")
    except (TypeError, ValueError):
        return None                              # not a flat buffer: decode_compressed reports it
    if len(buf) < 2 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    i, n = 2, len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:                       # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:   # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):               # end of image / start of scan: no frame header
            return None
        length = (buf[i + 2] << 8) | buf[i + 3]
        if marker in _JPEG_SOF and i + 9 <= n:
            height = (buf[i + 5] << 8) | buf[i + 6]
            width = (buf[i + 7] << 8) | buf[i + 8]
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def decode_compressed(format: str, data, max_pixels: int = DEFAULT_MAX_PIXELS
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to ``(gray, rgb | None)``.

    ``format`` is e.g. ``"jpeg"``, ``"png"`` or image_transport's ``"rgb8; jpeg compressed bgr8"``.
    The codec is taken from the stream's magic bytes; ``format`` only has to not name another
    codec. ``compressedDepth`` (depth PNG with a private header) is rejected. A single-channel
    stream gives ``rgb=None``; 16-bit PNGs are reduced with ``>> 8``.
    """
    if not isinstance(format, str):
        raise ImageDecodeError(f"compressed image format must be a string, got {type(format).__name__}")
    fmt = format.strip().lower()
    if "compresseddepth" in fmt:
        raise ImageDecodeError(f"compressed image format {format!r} (compressedDepth) is not "
                               "supported; expected a jpeg or png colour/mono image")
    words = set(re.findall(r"[a-z0-9]+", fmt))
    if fmt and not words & {"jpeg", "jpg", "png"}:
        raise ImageDecodeError(f"unsupported compressed image format {format!r}; expected jpeg or "
                               "png (e.g. 'jpeg', 'png', 'bgr8; jpeg compressed bgr8')")
    buf = _as_bytes(data)
    if buf.size == 0:
        raise ImageDecodeError(f"compressed image ({format!r}): data is empty")
    head = buf[:32].tobytes()
    if head.startswith(_PNG_MAGIC):
        if len(head) >= 24:  # IHDR width/height: refuse decompression bombs before decoding
            w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            _check_size(w, h, max_pixels)
    elif head.startswith(_JPEG_MAGIC):
        size = jpeg_size(buf)        # frame header: refuse decompression bombs before decoding
        if size is not None:
            _check_size(size[0], size[1], max_pixels)
    else:
        raise ImageDecodeError(f"compressed image ({format!r}, {buf.size} bytes) is neither a JPEG "
                               "nor a PNG stream (bad magic bytes)")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageDecodeError(f"compressed image ({format!r}, {buf.size} bytes) is corrupt: "
                               f"{str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.size == 0:
        raise ImageDecodeError(f"compressed image ({format!r}, {buf.size} bytes) is corrupt or "
                               "truncated: the decoder returned no image")
    _check_size(img.shape[1], img.shape[0], max_pixels)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"compressed image ({format!r}) decoded to {img.dtype}; expected "
                               "8- or 16-bit samples")
    if img.ndim == 2 or img.shape[2] == 1:
        return np.ascontiguousarray(img.reshape(img.shape[0], img.shape[1])), None
    if img.shape[2] == 3:   # OpenCV decodes colour to BGR(A) whatever the 'format' says
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY), cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageDecodeError(f"compressed image ({format!r}) has {img.shape[2]} channels; expected 1, 3 or 4")


# ---------------------------------------------------------------------------------------------
# Encoding (tests and synthetic sequences)

def _rgb_to_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """BT.601 limited-range RGB -> packed 4:2:2 (H, W, 2); chroma averaged over pixel pairs.

    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, Cb/Cr centred on 128 (ITU-R BT.601).
    """
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    cb = 0.5 * (cb[:, 0::2] + cb[:, 1::2])
    cr = 0.5 * (cr[:, 0::2] + cr[:, 1::2])
    h, w = y.shape
    chroma = np.empty((h, w), np.float32)
    chroma[:, 0::2], chroma[:, 1::2] = cb, cr          # U0 V0 U1 V1 ... one pair per 2 pixels
    planes = (chroma, y) if order == "uyvy" else (y, chroma)
    return np.clip(np.rint(np.stack(planes, axis=-1)), 0, 255).astype(np.uint8)


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Keep, at each pixel, the channel the Bayer ``pattern`` (top-left 2x2, reading order) has."""
    h, w, _ = rgb.shape
    tile = np.array(["rgb".index(c) for c in pattern]).reshape(2, 2)
    idx = np.tile(tile, ((h + 1) // 2, (w + 1) // 2))[:h, :w]
    return np.take_along_axis(rgb, idx[..., None], axis=2)[..., 0]


def encode_image(rgb: np.ndarray, encoding: str, *, is_bigendian: bool = False,
                 row_padding: int = 0) -> tuple[bytes, int]:
    """RGB HxWx3 uint8 -> ``(data, step)`` of a ``sensor_msgs/Image`` with ``encoding``.

    The inverse of :func:`decode_image`: 16-bit encodings store ``v * 257`` (so ``>> 8`` gives
    ``v`` back), Bayer encodings keep one channel per pixel, YUV 4:2:2 uses BT.601 limited range.
    ``row_padding`` appends zero bytes to every row (step > width * bytes per pixel).
    """
    spec = _spec_for(encoding)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"encode_image needs an HxWx3 uint8 image, got {rgb.dtype} {rgb.shape}")
    if row_padding < 0:
        raise ValueError(f"row_padding={row_padding} must be >= 0")
    h, w, _ = rgb.shape
    if spec.kind == "mono":
        arr = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif spec.kind == "rgb":
        arr = rgb
    elif spec.kind == "bgr":
        arr = rgb[..., ::-1]
    elif spec.kind in ("rgba", "bgra"):
        colour = rgb if spec.kind == "rgba" else rgb[..., ::-1]
        arr = np.concatenate([colour, np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif spec.kind == "yuv":
        if w % 2:
            raise ValueError(f"{encoding} needs an even width, got {w}")
        arr = _rgb_to_yuv422(rgb, spec.pattern)
    else:
        arr = _mosaic(rgb, spec.pattern)
    if spec.depth == 2:
        arr = (arr.astype(np.uint16) * 257).astype(">u2" if is_bigendian else "<u2")
    rows = np.ascontiguousarray(arr).view(np.uint8).reshape(h, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, row_padding), np.uint8)], axis=1)
    return rows.tobytes(), int(rows.shape[1])
