"""Tests for sirenpose_ros.core.image: every ROS encoding, rejections, compressed images."""
import array

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sirenpose_ros.core.image import (SUPPORTED_ENCODINGS, ImageDecodeError, decode_compressed,
                                      decode_image, encode_image)

H, W = 48, 64
LOSSLESS = ["rgb8", "bgr8", "rgba8", "bgra8", "8UC3", "8UC4", "rgb16", "bgr16", "rgba16", "bgra16"]
MONO = ["mono8", "8UC1", "mono16", "16UC1"]
YUV = ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"]
BAYER = [f"bayer_{p}{b}" for p in ("rggb", "bggr", "gbrg", "grbg") for b in (8, 16)]


def smooth_rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """Random but smooth colour image: a few low-frequency sinusoids per channel."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(3):
            fu, fv, ph = rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.0), rng.uniform(0, 6.3)
            img[..., c] += np.sin(2 * np.pi * (fu * u + fv * v) + ph)
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(20 + 215 * img).astype(np.uint8)


def solid(colour, h: int = 16, w: int = 16) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def decode(enc, rgb, **kw):
    data, step = encode_image(rgb, enc, **kw)
    return decode_image(enc, rgb.shape[1], rgb.shape[0], step, data,
                        is_bigendian=kw.get("is_bigendian", False))


def test_supported_encodings_cover_the_brief():
    assert set(LOSSLESS + MONO + YUV + BAYER) == set(SUPPORTED_ENCODINGS)


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("padding", [0, 5])
@pytest.mark.parametrize("enc", LOSSLESS)
def test_lossless_colour_round_trip_is_exact(enc, padding):
    rgb = smooth_rgb()
    gray, out = decode(enc, rgb, row_padding=padding)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(gray, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("enc", MONO)
def test_mono_round_trip_is_exact(enc, padding):
    rgb = smooth_rgb()
    gray, out = decode(enc, rgb, row_padding=padding)
    assert out is None and gray.shape == (H, W) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


@pytest.mark.parametrize("padding", [0, 4])
@pytest.mark.parametrize("enc", YUV + BAYER)
def test_lossy_round_trip_is_close(enc, padding):
    rgb = smooth_rgb()
    gray, out = decode(enc, rgb, row_padding=padding)
    assert out.shape == (H, W, 3) and gray.shape == (H, W)
    ref_gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(int)
    if enc in BAYER:   # demosaicing is approximate at the outermost pixels
        sl = (slice(2, -2), slice(2, -2))
        rgb, out, gray, ref_gray = rgb[sl], out[sl], gray[sl], ref_gray[sl]
    err = np.abs(out.astype(int) - rgb.astype(int))
    assert err.mean() < 2.0 and np.percentile(err, 99) < 8, (err.mean(), err.max())
    assert np.abs(gray.astype(int) - ref_gray).mean() < 2.0


@pytest.mark.parametrize("enc", LOSSLESS + YUV + BAYER)
@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 200, 30)])
def test_channel_order_pure_colours(enc, colour):
    """A pure red image stays red (catches BGR/RGB swaps and the Bayer naming trap)."""
    _, out = decode(enc, solid(colour))
    centre = out[4:-4, 4:-4].reshape(-1, 3).astype(int)
    assert np.abs(centre - np.array(colour)).max() <= 4, (centre[0], colour)


def test_bayer_pattern_mapping_is_not_swapped():
    """Mosaic with one pattern, decode as another: must be clearly wrong (the test can fail)."""
    rgb = smooth_rgb()
    data, step = encode_image(rgb, "bayer_rggb8")
    ok = decode_image("bayer_rggb8", W, H, step, data)[1][2:-2, 2:-2].astype(int)
    wrong = decode_image("bayer_bggr8", W, H, step, data)[1][2:-2, 2:-2].astype(int)
    ref = rgb[2:-2, 2:-2].astype(int)
    assert np.abs(ok - ref).mean() < 2 < 10 < np.abs(wrong - ref).mean()


def test_mosaic_layout_matches_ros_names():
    """The top-left 2x2 block of a ROS 'bayer_grbg8' image is G R / B G."""
    data, _ = encode_image(solid((200, 100, 50), 2, 2), "bayer_grbg8")
    assert list(data) == [100, 200, 50, 100]


def test_yuv_byte_layout():
    """UYVY = U Y0 V Y1, YUYV = Y0 U Y1 V; BT.601 limited range (white -> Y 235, U = V = 128)."""
    uyvy, _ = encode_image(solid((255, 255, 255), 1, 2), "uyvy")
    yuyv, _ = encode_image(solid((255, 255, 255), 1, 2), "yuyv")
    assert list(uyvy) == [128, 235, 128, 235] and list(yuyv) == [235, 128, 235, 128]
    black, _ = encode_image(solid((0, 0, 0), 1, 2), "yuv422")
    assert list(black) == [128, 16, 128, 16]


@pytest.mark.parametrize("enc", ["mono16", "rgb16", "bayer_gbrg16", "bgra16"])
def test_big_endian_16_bit(enc):
    rgb = smooth_rgb()
    data, step = encode_image(rgb, enc, row_padding=2)
    # v * 257 has equal bytes: give every sample a random low byte so the byte order matters
    rows = np.frombuffer(data, np.uint8).reshape(H, step)
    words = rows[:, : step - 2].view("<u2").copy()
    words = (words & 0xFF00) | np.random.default_rng(3).integers(0, 256, words.shape, dtype=np.uint16)
    pad = np.zeros((H, 2), np.uint8)
    le = np.concatenate([words.astype("<u2").view(np.uint8), pad], axis=1).tobytes()
    be = np.concatenate([words.astype(">u2").view(np.uint8), pad], axis=1).tobytes()
    g_ref, c_ref = decode(enc, rgb)
    for buf, big in ((le, False), (be, True)):
        g, c = decode_image(enc, W, H, step, buf, is_bigendian=big)
        np.testing.assert_array_equal(g, g_ref)
        if c_ref is not None:
            np.testing.assert_array_equal(c, c_ref)
    assert not np.array_equal(decode_image(enc, W, H, step, be, is_bigendian=False)[0], g_ref)


def test_mono16_shift_and_significant_bits():
    vals = np.array([[0, 255, 256, 4095], [40000, 65535, 1000, 2048]], dtype="<u2")
    gray, _ = decode_image("mono16", 4, 2, 8, vals.tobytes())
    np.testing.assert_array_equal(gray, vals >> 8)
    gray12, _ = decode_image("16UC1", 4, 2, 8, vals.tobytes(), significant_bits=12)
    np.testing.assert_array_equal(gray12, np.minimum(vals >> 4, 255))
    be = vals.astype(">u2").tobytes()
    np.testing.assert_array_equal(decode_image("mono16", 4, 2, 8, be, True)[0], vals >> 8)
    np.testing.assert_array_equal(decode_image("mono16", 4, 2, 8, be, True, significant_bits=12)[0],
                                  np.minimum(vals >> 4, 255))


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, lambda b: array.array("B", b),
                                  lambda b: np.frombuffer(b, np.uint8)])
def test_data_types(wrap):
    rgb = smooth_rgb()
    data, step = encode_image(rgb, "bgr8", row_padding=2)
    _, out = decode_image("bgr8", W, H, step, wrap(data))
    np.testing.assert_array_equal(out, rgb)


def test_zero_copy_views():
    rgb = smooth_rgb()
    data, step = encode_image(rgb, "rgb8", row_padding=6)
    buf = np.frombuffer(data, np.uint8)
    _, out = decode_image("rgb8", W, H, step, buf)
    assert np.shares_memory(out, buf)
    data, step = encode_image(rgb, "mono8")
    arr = array.array("B", data)
    gray, _ = decode_image("mono8", W, H, step, arr)
    assert np.shares_memory(gray, np.frombuffer(arr, np.uint8))


def test_case_insensitive_and_surplus_data():
    rgb = smooth_rgb()
    data, step = encode_image(rgb, "rgb8")
    _, out = decode_image("RGB8", W, H, step, data + b"\0" * 100)
    np.testing.assert_array_equal(out, rgb)


# ------------------------------------------------------------------ rejections

GOOD = dict(encoding="rgb8", width=4, height=3, step=12, data=bytes(36))


@pytest.mark.parametrize("change, words", [
    (dict(encoding="32FC1"), ["unsupported", "32FC1", "mono8", "bayer_rggb8"]),
    (dict(encoding=None), ["encoding", "string"]),
    (dict(width=0), ["0x3", "> 0"]),
    (dict(height=-2), ["4x-2", "> 0"]),
    (dict(width=2.5), ["width", "integer"]),
    (dict(width=5000, height=5000, step=15000), ["25000000", "maximum"]),
    (dict(step=11), ["step 11", "12"]),
    (dict(data=bytes(35)), ["35 bytes", "36"]),
    (dict(data=b""), ["empty"]),
    (dict(data=None), ["bytes-like", "NoneType"]),
    (dict(data=[1, 2, 3]), ["bytes-like", "list"]),
    (dict(encoding="yuv422", width=3, step=6, data=bytes(18)), ["odd", "even width"]),
    (dict(encoding="mono16", step=7, data=bytes(24)), ["step 7", "8"]),
])
def test_rejections(change, words):
    args = dict(GOOD, **change)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(args["encoding"], args["width"], args["height"], args["step"], args["data"])
    msg = str(info.value)
    for w in words:
        assert w in msg, msg
    assert isinstance(info.value, ValueError)


def test_max_pixels_argument():
    with pytest.raises(ImageDecodeError, match="maximum of 11"):
        decode_image("mono8", 4, 3, 4, bytes(12), max_pixels=11)
    assert decode_image("mono8", 4, 3, 4, bytes(12), max_pixels=12)[0].shape == (3, 4)


_ENCODING_STRINGS = st.one_of(st.sampled_from(SUPPORTED_ENCODINGS),
                              st.sampled_from(["", "32FC1", "nv21", "BGR8", " mono8 "]), st.text(max_size=8))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(enc=_ENCODING_STRINGS, width=st.integers(-3, 40), height=st.integers(-3, 40),
       step=st.integers(-5, 200), length=st.integers(0, 3000), big=st.booleans(),
       kind=st.sampled_from(["bytes", "array", "ndarray", "u16"]))
def test_property_only_decode_errors(enc, width, height, step, length, big, kind):
    raw = bytes(np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8))
    data = {"bytes": raw, "array": array.array("B", raw), "ndarray": np.frombuffer(raw, np.uint8),
            "u16": np.frombuffer(raw[: length // 2 * 2], np.uint16)}[kind]
    try:
        gray, rgb = decode_image(enc, width, height, step, data, is_bigendian=big, max_pixels=1000)
    except ImageDecodeError as exc:
        assert str(exc)
        return
    assert gray.shape == (height, width) and gray.dtype == np.uint8
    assert rgb is None or (rgb.shape == (height, width, 3) and rgb.dtype == np.uint8)


# ------------------------------------------------------------------ compressed

@pytest.mark.parametrize("fmt, ext, tol", [("jpeg", ".jpg", 6.0), ("rgb8; jpeg compressed bgr8", ".jpg", 6.0),
                                           ("png", ".png", 0.0), ("bgr8; png compressed bgr8", ".png", 0.0)])
def test_compressed_colour_round_trip(fmt, ext, tol):
    rgb = smooth_rgb()
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    gray, out = decode_compressed(fmt, buf.tobytes())
    assert out.shape == (H, W, 3) and gray.shape == (H, W)
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() <= tol
    red = decode_compressed(fmt, cv2.imencode(ext, cv2.cvtColor(solid((255, 0, 0)), cv2.COLOR_RGB2BGR))[1])[1]
    assert red[8, 8, 0] > 240 and red[8, 8, 2] < 15


def test_compressed_mono_and_16_bit():
    g = cv2.cvtColor(smooth_rgb(), cv2.COLOR_RGB2GRAY)
    gray, rgb = decode_compressed("mono8; png compressed ", cv2.imencode(".png", g)[1])
    assert rgb is None
    np.testing.assert_array_equal(gray, g)
    g16 = g.astype(np.uint16) * 257
    gray16, _ = decode_compressed("png", array.array("B", cv2.imencode(".png", g16)[1].tobytes()))
    np.testing.assert_array_equal(gray16, g)


@pytest.mark.parametrize("fmt, data, words", [
    ("jpeg", b"\xff\xd8\xff" + bytes(range(256)) * 4, ["corrupt"]),
    ("jpeg", b"hello world, not an image", ["neither a JPEG nor a PNG"]),
    ("png", b"", ["empty"]),
    ("tiff", b"II*\0", ["unsupported", "jpeg or png"]),
    ("16UC1; compressedDepth png", b"\x89PNG", ["compressedDepth"]),
    ("png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\1\0\0\0\1\0\0\x08\x02", ["maximum"]),
])
def test_compressed_rejections(fmt, data, words):
    with pytest.raises(ImageDecodeError) as info:
        decode_compressed(fmt, data)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_compressed_truncated_png_is_rejected():
    buf = cv2.imencode(".png", smooth_rgb())[1].tobytes()
    with pytest.raises(ImageDecodeError):
        decode_compressed("png", buf[: len(buf) // 2])
