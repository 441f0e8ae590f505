"""Property tests of the node's input conversions, without DDS: arbitrary sensor_msgs/Image,
CompressedImage and CameraInfo field values go through the same functions the node calls
(decode_image_msg, camera_model_from_info, depth_image_metres). Each call either returns
well-formed arrays or raises a ValueError (the node counts, logs and drops those) with a
non-empty message; any other exception would kill the frame with a 'pipeline error' or worse.
"""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("rclpy")

from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from sirenpose_ros.core.camera import MODELS, CameraModel  # noqa: E402
from sirenpose_ros.core.image import SUPPORTED_ENCODINGS, _spec_for, encode_image  # noqa: E402
from sirenpose_ros.ros import messages as M  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

GARBAGE_ENCODINGS = ["", " ", "weird42", "rgb", "RGB8", " mono8 ", "bayer_rggb", "32FC1",
                     "16SC1", "yuv420", "jpeg", "8UC2", "\x00", "rgb8\x00", "ü"]
ENCODINGS = st.one_of(st.sampled_from(SUPPORTED_ENCODINGS), st.sampled_from(GARBAGE_ENCODINGS),
                      st.text(max_size=12))
# uint32 fields in the message; small negatives too, since Python message objects accept them.
SIZES = st.one_of(st.integers(-2, 48), st.sampled_from([2**16, 2**31 - 1, 2**32 - 1]))
ODD_FLOATS = st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-300,
                              -1.0, 1e300])


def call(fn, *args):
    """(result, None) or (None, ValueError); anything else propagates and fails the test."""
    try:
        return fn(*args), None
    except ValueError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None, exc


def check_decoded(out, h=None, w=None):
    gray, rgb = out
    assert isinstance(gray, np.ndarray) and gray.dtype == np.uint8 and gray.ndim == 2
    assert gray.shape[0] > 0 and gray.shape[1] > 0
    if h is not None:
        assert gray.shape == (h, w)
    if rgb is not None:
        assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
        assert rgb.shape == gray.shape + (3,)


# ----------------------------------------------------------------------------- raw images
MODES = st.sampled_from(["valid", "valid", "damaged", "damaged", "random"])
DAMAGE = st.sampled_from(["short", "long", "step", "width", "height", "encoding"])


@st.composite
def image_messages(draw):
    mode = draw(MODES)
    msg = Image(is_bigendian=draw(st.integers(0, 255)))
    if mode == "random":
        enc = draw(ENCODINGS)
        w, h, step = draw(SIZES), draw(SIZES), draw(SIZES)
        n = draw(st.integers(0, 4096))
    else:
        # Fields of a real image of a supported encoding, then (mode 'damaged') one field
        # broken: exercises the success path and each check on its own.
        enc = draw(st.sampled_from(SUPPORTED_ENCODINGS))
        w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
        bpp = _spec_for(enc).bytes_per_pixel
        if _spec_for(enc).kind == "yuv":
            w += w % 2
        step = w * bpp + draw(st.integers(0, 5))
        n = step * h
        damage = draw(DAMAGE) if mode == "damaged" else "none"
        if damage == "short":
            n = draw(st.integers(0, n - 1))
        elif damage == "long":
            n += draw(st.integers(1, 64))
        elif damage == "step":
            step = draw(st.integers(-2, w * bpp + 8))
        elif damage == "width":
            w = draw(SIZES)
        elif damage == "height":
            h = draw(SIZES)
        elif damage == "encoding":
            enc = draw(ENCODINGS)
    msg.encoding = enc
    msg.width, msg.height, msg.step = w, h, step
    msg.data = draw(st.binary(min_size=n, max_size=n))
    return msg


@FUZZ
@given(msg=image_messages(), max_pixels=st.sampled_from([1, 64, 4096 * 4096]),
       bits=st.integers(8, 16))
def test_raw_image_decodes_or_raises_value_error(msg, max_pixels, bits):
    out, err = call(M.decode_image_msg, msg, bits, max_pixels)
    if err is None:
        check_decoded(out, msg.height, msg.width)
        assert msg.width * msg.height <= max_pixels


def test_every_supported_encoding_round_trips_through_the_message():
    """The fuzz above must also reach the success path: every encoding decodes a real image."""
    rgb = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    for enc in SUPPORTED_ENCODINGS:
        data, step = encode_image(rgb, enc, row_padding=3)
        msg = Image(encoding=enc, width=8, height=6, step=step, data=data)
        gray, out_rgb = M.decode_image_msg(msg)
        assert gray.shape == (6, 8), enc
        assert (out_rgb is None) == (enc.lower() in ("mono8", "mono16", "8uc1", "16uc1")), enc


# ----------------------------------------------------------------------------- compressed
def _png_with_size(w: int, h: int) -> bytes:
    """A syntactically valid PNG header that claims w x h (the pixel data is missing)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def _jpeg_with_size(w: int, h: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is patched to claim w x h."""
    jpg = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    i = jpg.index(b"\xff\xc0")
    jpg[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(jpg)


_IMG = np.random.default_rng(1).integers(0, 255, (12, 16, 3), dtype=np.uint8)
VALID_STREAMS = [cv2.imencode(".jpg", _IMG)[1].tobytes(), cv2.imencode(".png", _IMG)[1].tobytes(),
                 cv2.imencode(".png", _IMG[..., 0])[1].tobytes(),
                 cv2.imencode(".png", (_IMG.astype(np.uint16) * 257))[1].tobytes(),
                 cv2.imencode(".png", np.dstack([_IMG, _IMG[..., :1]]))[1].tobytes()]


@st.composite
def compressed_messages(draw):
    fmt = draw(st.one_of(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "JPG",
                                          "16UC1; compressedDepth png", "tiff", ""]),
                         st.text(max_size=10)))
    kind = draw(st.sampled_from(["valid", "valid", "truncated", "flipped", "magic+junk", "junk",
                                 "huge_png", "huge_jpeg"]))
    if kind == "huge_png":
        data = _png_with_size(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))
    elif kind == "huge_jpeg":
        data = _jpeg_with_size(draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))
    elif kind in ("junk", "magic+junk"):
        junk = draw(st.binary(max_size=256))
        data = (draw(st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"])) + junk
                if kind == "magic+junk" else junk)
    else:
        data = bytearray(draw(st.sampled_from(VALID_STREAMS)))
        if kind == "truncated":
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif kind == "flipped":
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(data) - 1))
                data[i] ^= draw(st.integers(1, 255))
        data = bytes(data)
    return CompressedImage(format=fmt, data=data)


@FUZZ
@given(msg=compressed_messages(), max_pixels=st.sampled_from([1, 100, 4096 * 4096]))
def test_compressed_image_decodes_or_raises_value_error(msg, max_pixels):
    out, err = call(M.decode_image_msg, msg, 16, max_pixels)
    if err is None:
        check_decoded(out)
        assert out[0].size <= max_pixels


def test_jpeg_header_claiming_a_huge_frame_is_refused_before_decoding():
    """A 600-byte JPEG that claims 20000x20000 made OpenCV allocate ~2.3 GB and spend ~5 s
    before the size check (found by this file; fixed with core.image.jpeg_size)."""
    from sirenpose_ros.core.image import jpeg_size
    import time
    msg = CompressedImage(format="jpeg", data=_jpeg_with_size(20000, 20000))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="pixels"):
        M.decode_image_msg(msg, 16, 4096 * 4096)
    assert time.perf_counter() - t0 < 0.2
    for q in ([cv2.IMWRITE_JPEG_QUALITY, 90], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        jpg = cv2.imencode(".jpg", _IMG, q)[1].tobytes()
        assert jpeg_size(jpg) == (16, 12)
    assert jpeg_size(VALID_STREAMS[1]) is None        # PNG


def test_valid_compressed_streams_decode():
    for data in VALID_STREAMS:
        gray, _ = M.decode_image_msg(CompressedImage(format="png", data=data))
        assert gray.shape == (12, 16)


# ----------------------------------------------------------------------------- CameraInfo
FLOATS = st.one_of(st.floats(-1e4, 1e4), ODD_FLOATS)


D_LENGTH = {"none": 0, "plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


@st.composite
def camera_infos(draw):
    mode = draw(MODES)
    w, h = draw(st.integers(1, 4000)), draw(st.integers(1, 4000))
    fx, fy = draw(st.floats(1.0, 2000.0)), draw(st.floats(1.0, 2000.0))
    k = [fx, draw(st.sampled_from([0.0, 0.5])), draw(st.floats(0.0, w)), 0.0, fy,
         draw(st.floats(0.0, h)), 0.0, 0.0, 1.0]
    model = draw(st.sampled_from(MODELS))
    d = draw(st.lists(st.floats(-0.3, 0.3), min_size=D_LENGTH[model], max_size=D_LENGTH[model]))
    if mode == "damaged":
        what = draw(st.sampled_from(["k", "k", "d", "d_length", "model", "size"]))
        if what == "k":
            k[draw(st.sampled_from([0, 1, 2, 4, 5, 8]))] = draw(st.one_of(ODD_FLOATS, st.floats(-1e4, 1e4)))
        elif what == "d" and d:
            d[draw(st.integers(0, len(d) - 1))] = draw(ODD_FLOATS)
        elif what == "d_length":
            d = draw(st.lists(st.floats(-0.5, 0.5), max_size=10))
        elif what == "model":
            model = draw(st.one_of(st.sampled_from(["", "PLUMB_BOB", " equidistant ", "fisheye",
                                                    "kannala_brandt"]), st.text(max_size=10)))
        else:
            w = draw(st.one_of(st.integers(-2, 0), st.just(2**32 - 1)))
    elif mode == "random":
        w, h = draw(SIZES), draw(SIZES)
        k = draw(st.lists(FLOATS, min_size=9, max_size=9))
        model = draw(st.text(max_size=10))
        d = draw(st.lists(FLOATS, max_size=10))
    msg = CameraInfo(distortion_model=model)
    msg.width, msg.height = w, h
    msg.k = [float(v) for v in k]
    msg.d = [float(v) for v in d]
    return msg


@FUZZ
@given(msg=camera_infos())
def test_camera_info_gives_a_valid_model_or_raises_value_error(msg):
    cam, err = call(M.camera_model_from_info, msg)
    if err is not None:
        return
    assert isinstance(cam, CameraModel)
    assert (cam.width, cam.height) == (msg.width, msg.height) and cam.width > 0 and cam.height > 0
    assert np.isfinite(cam.K).all() and cam.fx > 0 and cam.fy > 0
    assert cam.distortion_model in MODELS
    assert cam.D.size == D_LENGTH[cam.distortion_model]
    # A model accepted by the node must also be usable by the pipeline: undistorting pixels
    # gives finite coordinates or NaN (no exception), never inf.
    px = np.array([[cam.cx, cam.cy], [0.0, 0.0], [cam.width - 1.0, cam.height - 1.0]])
    xn = cam.undistort_points(px)
    assert xn.shape == (3, 2) and not np.isinf(xn).any()


def test_camera_info_rejections_name_the_problem():
    good = dict(width=320, height=240, k=[200.0, 0, 160, 0, 200, 120, 0, 0, 1], d=[0.0] * 5,
                distortion_model="plumb_bob")
    cases = {"nan": dict(k=[float("nan")] + good["k"][1:]), "zeros": dict(k=[0.0] * 9),
             "length": dict(d=[0.1, 0.01, 0.0]), "unknown": dict(distortion_model="fisheye_x"),
             "size": dict(width=0)}
    assert isinstance(M.camera_model_from_info(CameraInfo(**good)), CameraModel)
    for word, change in cases.items():
        with pytest.raises(ValueError) as exc:
            M.camera_model_from_info(CameraInfo(**dict(good, **change)))
        assert word in str(exc.value).lower() or "invalid" in str(exc.value).lower(), (word, exc.value)


# ----------------------------------------------------------------------------- depth
@st.composite
def depth_messages(draw):
    mode = draw(MODES)
    if mode == "random":
        enc = draw(st.one_of(st.sampled_from(["16SC1", "32FC2", "rgb8", ""]), st.text(max_size=6)))
        w, h, step, n = draw(SIZES), draw(SIZES), draw(SIZES), draw(st.integers(0, 2048))
    else:
        enc = draw(st.sampled_from(["16UC1", "mono16", "32FC1", "32fc1"]))
        w, h = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        step = w * (4 if "32" in enc else 2) + draw(st.integers(0, 3))
        n = step * h
        if mode == "damaged":
            what = draw(st.sampled_from(["step", "data", "width"]))
            if what == "step":
                step = draw(st.integers(-1, step))
            elif what == "data":
                n = max(0, n + draw(st.integers(-5, 5)))
            else:
                w = draw(SIZES)
    msg = Image(encoding=enc, is_bigendian=draw(st.integers(0, 1)))
    msg.width, msg.height, msg.step = w, h, step
    if "32" in enc and draw(st.booleans()):   # float samples incl. NaN, inf, 0, negative
        vals = draw(st.lists(FLOATS, min_size=n // 4, max_size=n // 4))
        with np.errstate(over="ignore"):     # 1e300 -> inf in float32 is one of the cases
            msg.data = np.asarray(vals, ">f4" if msg.is_bigendian else "<f4").tobytes() + bytes(n % 4)
    else:
        msg.data = draw(st.binary(min_size=n, max_size=n))
    return msg


@FUZZ
@given(msg=depth_messages())
def test_depth_image_gives_metres_or_raises_value_error(msg):
    depth, err = call(M.depth_image_metres, msg)
    if err is not None:
        return
    assert depth.dtype == np.float32 and depth.shape == (msg.height, msg.width)
    valid = ~np.isnan(depth)
    assert np.isfinite(depth[valid]).all() and (depth[valid] > 0).all()


def test_depth_units():
    mm = np.array([[0, 1000], [2500, 65535]], "<u2")
    d = M.depth_image_metres(Image(encoding="16UC1", width=2, height=2, step=4, data=mm.tobytes()))
    assert np.isnan(d[0, 0]) and d[0, 1] == pytest.approx(1.0) and d[1, 0] == pytest.approx(2.5)
    m = np.array([[np.nan, -1.0], [np.inf, 3.0]], "<f4")
    d = M.depth_image_metres(Image(encoding="32FC1", width=2, height=2, step=8, data=m.tobytes()))
    assert np.isnan(d[:, 0]).all() and np.isnan(d[0, 1]) and d[1, 1] == 3.0
