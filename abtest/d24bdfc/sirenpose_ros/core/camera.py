"""Camera intrinsics and lens distortion (ROS ``CameraInfo`` models), ROS-free.

The pipeline undistorts *keypoints*, never images: :meth:`CameraModel.undistort_points` maps
observed pixels to normalized image coordinates (x/z, y/z) of an ideal pinhole camera, and
:meth:`CameraModel.project` maps camera-frame points to observed (distorted) pixels.

Supported ``distortion_model`` values and D lengths:

- ``'none'``: no distortion. Any known model whose D is empty or all zeros becomes ``'none'``
  (fast affine path); an empty model string is accepted only with empty/zero D.
- ``'plumb_bob'``: D = (k1, k2, p1, p2, k3), exactly 5 (OpenCV's 5-coefficient model).
- ``'rational_polynomial'``: D = (k1, k2, p1, p2, k3, k4, k5, k6), 8; 5 is also accepted and
  padded with k4 = k5 = k6 = 0, which is exactly the plumb_bob model (some calibrators publish 5).
- ``'equidistant'``: D = (k1, k2, k3, k4), exactly 4 (OpenCV fisheye / Kannala-Brandt).

Pixel convention (``types.py``): (u, v) with the origin at the centre of the top-left pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

MODELS = ("none", "plumb_bob", "rational_polynomial", "equidistant")
_D_LENGTHS = {"plumb_bob": (5,), "rational_polynomial": (8, 5), "equidistant": (4,)}

# Iterative undistortion: OpenCV's default 5 iterations leave ~1e-4 error at the corners of a
# strongly distorted lens; iterate to convergence instead (costs microseconds for 1000s of points).
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)
# An undistorted point whose re-distortion misses the observed pixel by more than this did not
# converge (outside the region where the distortion polynomial is invertible): it becomes NaN.
_UNDISTORT_MAX_RESIDUAL_PX = 1e-3


class CameraModelError(ValueError):
    """Invalid intrinsics or distortion; the message says what is wrong and what is allowed."""


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class CameraModel:
    """An immutable calibrated camera: image size, K (3x3), distortion model and coefficients."""
    width: int
    height: int
    K: np.ndarray                     # 3x3 float64, read-only
    distortion_model: str             # one of MODELS
    D: np.ndarray                     # float64, read-only; empty for 'none'
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # lazily computed

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_camera_info(width: int, height: int, k: Sequence[float], d: Sequence[float],
                         distortion_model: str) -> "CameraModel":
        """Validated model from ``CameraInfo`` fields (``k`` row-major 9, ``d``, model name)."""
        width, height = _check_size(width, height)
        K = _check_K(k, width, height)
        model, D = _check_distortion(distortion_model, d)
        return CameraModel(width, height, _readonly(K), model, _readonly(D))

    @staticmethod
    def pinhole(width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> "CameraModel":
        """Undistorted camera with zero skew."""
        return CameraModel.from_camera_info(width, height, [fx, 0, cx, 0, fy, cy, 0, 0, 1], [], "none")

    # ------------------------------------------------------------------ properties
    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def is_distorted(self) -> bool:
        return self.distortion_model != "none"

    def same_geometry(self, other: "CameraModel") -> bool:
        """True when resolution, K, model and D agree (detects intrinsics changes mid-stream)."""
        return (isinstance(other, CameraModel) and self.width == other.width
                and self.height == other.height and self.distortion_model == other.distortion_model
                and self.D.shape == other.D.shape
                and np.allclose(self.K, other.K, rtol=1e-9, atol=1e-9)
                and np.allclose(self.D, other.D, rtol=1e-9, atol=1e-12))

    def __repr__(self) -> str:
        return (f"CameraModel({self.width}x{self.height}, fx={self.fx:.3f}, fy={self.fy:.3f}, "
                f"cx={self.cx:.3f}, cy={self.cy:.3f}, {self.distortion_model}, D={self.D.tolist()})")

    # ------------------------------------------------------------------ geometry
    def undistort_points(self, px: np.ndarray) -> np.ndarray:
        """Observed pixels (N, 2) -> normalized image coordinates (N, 2) float64 (x/z, y/z).

        NaN for points without a physical inverse: beyond the radius where the distortion stops
        being monotonic (the polynomial folds back, see :meth:`max_valid_radius`), where the
        iteration does not converge, or for non-finite input.
        """
        px = _as_points(px, 2, "px")
        if px.shape[0] == 0:
            return np.zeros((0, 2))
        xy_d = self._pixels_to_normalized(px)        # distorted normalized coordinates (skew removed)
        if not self.is_distorted:
            return xy_d
        # OpenCV ignores K's skew, so hand it distorted *normalized* points with K = I.
        src, eye = xy_d.reshape(-1, 1, 2), np.eye(3)
        if self.distortion_model == "equidistant":
            xy = cv2.fisheye.undistortPoints(src, eye, self.D, criteria=_UNDISTORT_CRITERIA)
        else:
            xy = cv2.undistortPoints(src, eye, self.D, criteria=_UNDISTORT_CRITERIA)
        xy = xy.reshape(-1, 2).astype(np.float64)
        residual = np.linalg.norm(self.normalized_to_pixels(self._distort(xy)) - px, axis=1)
        bad = ~(residual <= _UNDISTORT_MAX_RESIDUAL_PX)       # also catches NaN
        bad |= np.einsum("ij,ij->i", xy, xy) > self.max_valid_radius ** 2
        xy[bad] = np.nan
        return xy

    def project(self, xyz_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (N, 3) -> observed (distorted) pixels (N, 2).

        NaN where z <= 0 or where x/z, y/z lies beyond :meth:`max_valid_radius`.
        """
        xyz = _as_points(xyz_cam, 3, "xyz_cam")
        z = xyz[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = xyz[:, :2] / z[:, None]
        xy[~(z > 0)] = np.nan
        if self.is_distorted:
            xy[np.einsum("ij,ij->i", xy, xy) > self.max_valid_radius ** 2] = np.nan
        return self.normalized_to_pixels(self._distort(xy))

    @property
    def max_valid_radius(self) -> float:
        """Largest normalized radius sqrt(x^2 + y^2) where the radial distortion is monotonic.

        Beyond it the distortion polynomial folds back (typically k1 < 0 with k2 > 0), so a pixel
        has a second, unphysical preimage far outside the field of view. inf when no fold occurs
        up to 80 degrees off-axis (or 89.9 degrees for the equidistant model).
        """
        r_max = self._cache.get("r_max")
        if r_max is None:
            r_max = self._compute_max_valid_radius()
            self._cache["r_max"] = r_max
        return r_max

    def _compute_max_valid_radius(self) -> float:
        if not self.is_distorted:
            return math.inf
        if self.distortion_model == "equidistant":
            theta = np.linspace(0.0, math.radians(89.9), 20001)
            t2 = theta * theta
            D = self.D
            f = theta * (1 + t2 * (D[0] + t2 * (D[1] + t2 * (D[2] + t2 * D[3]))))
            radius = np.tan(theta)
        else:
            radius = np.linspace(0.0, math.tan(math.radians(80.0)), 20001)
            # radial part only (tangential terms are tiny); r * radial(r) must keep increasing
            f = self._distort(np.column_stack([radius, np.zeros_like(radius)]))[:, 0]
            if self.distortion_model == "rational_polynomial":
                r2 = radius * radius
                den = 1 + r2 * (self.D[5] + r2 * (self.D[6] + r2 * self.D[7]))
                f = np.where(den > 0, f, np.nan)
        ok = np.isfinite(f[1:]) & (np.diff(f) > 0)
        if ok.all():
            return math.inf
        return float(radius[int(np.argmin(ok))])

    def normalized_to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Normalized coordinates (N, 2) -> pixels of the ideal (undistorted) pinhole camera K."""
        xy = _as_points(xy, 2, "xy")
        K = self.K
        u = K[0, 0] * xy[:, 0] + K[0, 1] * xy[:, 1] + K[0, 2]
        v = K[1, 1] * xy[:, 1] + K[1, 2]
        return np.stack([u, v], axis=1)

    def _pixels_to_normalized(self, px: np.ndarray) -> np.ndarray:
        K = self.K
        y = (px[:, 1] - K[1, 2]) / K[1, 1]
        x = (px[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
        return np.stack([x, y], axis=1)

    def _distort(self, xy: np.ndarray) -> np.ndarray:
        """Ideal normalized coordinates (N, 2) -> distorted normalized coordinates (N, 2)."""
        if not self.is_distorted:
            return xy
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y
        D = self.D
        if self.distortion_model == "equidistant":
            r = np.sqrt(r2)
            theta = np.arctan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (D[0] + t2 * (D[1] + t2 * (D[2] + t2 * D[3]))))
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(r > 1e-12, theta_d / r, 1.0)   # theta_d / r -> 1 at the centre
            return xy * scale[:, None]
        k1, k2, p1, p2, k3 = D[:5]
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        if self.distortion_model == "rational_polynomial":
            radial = radial / (1 + r2 * (D[5] + r2 * (D[6] + r2 * D[7])))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=1)

    # ------------------------------------------------------------------ resolution changes
    def scaled(self, factor: float) -> "CameraModel":
        """The same camera at a resized resolution (as ``cv2.resize`` to the new size).

        New size = round(size * factor) (at least 1). The pixel-centre convention gives
        u' = (u + 0.5) * s - 0.5 with s = new_width / width (and t = new_height / height for v),
        which equals ``factor`` whenever size * factor is an integer. Distortion acts on
        normalized coordinates and is unchanged.
        """
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise CameraModelError(f"scale factor {factor!r} is invalid; expected a finite number > 0")
        w = max(1, int(round(self.width * factor)))
        h = max(1, int(round(self.height * factor)))
        s, t = w / self.width, h / self.height
        K = self.K.copy()
        K[0, :] = [K[0, 0] * s, K[0, 1] * s, (K[0, 2] + 0.5) * s - 0.5]
        K[1, 1:] = [K[1, 1] * t, (K[1, 2] + 0.5) * t - 0.5]
        return CameraModel(w, h, _readonly(K), self.distortion_model, self.D)

    def pixel_rays(self, h: int, w: int) -> np.ndarray:
        """Normalized coordinates (h, w, 2) of the pixel centres of an h x w grid over the image.

        The grid is the image resized to (w, h) (``cv2.resize`` convention); its pixel (i, j)
        covers full-resolution pixel u = (j + 0.5) * width / w - 0.5, v likewise. Undistorted;
        NaN where undistortion does not converge. Cached per (h, w); the result is read-only.
        """
        key = (int(h), int(w))
        rays = self._cache.get(key)
        if rays is None:
            if key[0] <= 0 or key[1] <= 0:
                raise CameraModelError(f"pixel_rays grid {h}x{w} is invalid; expected h, w > 0")
            u = (np.arange(key[1]) + 0.5) * (self.width / key[1]) - 0.5
            v = (np.arange(key[0]) + 0.5) * (self.height / key[0]) - 0.5
            uu, vv = np.meshgrid(u, v)
            px = np.stack([uu.ravel(), vv.ravel()], axis=1)
            rays = _readonly(self.undistort_points(px).reshape(key[0], key[1], 2))
            self._cache[key] = rays
        return rays


# ---------------------------------------------------------------------------------------------
# validation helpers

def _as_points(a: np.ndarray, dim: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1 and a.size == 0:
        a = a.reshape(0, dim)
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {a.shape}")
    return np.ascontiguousarray(a)


def _check_size(width: int, height: int) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise CameraModelError(f"camera size {width!r}x{height!r} is invalid; expected integers > 0") from None
    if w != width or h != height or w <= 0 or h <= 0:
        raise CameraModelError(f"camera size {width!r}x{height!r} is invalid; expected integers > 0")
    return w, h


def _check_K(k: Sequence[float], width: int, height: int) -> np.ndarray:
    try:
        K = np.array(k, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        raise CameraModelError(f"K must be 9 numbers (row-major 3x3), got {k!r}") from None
    if not np.all(np.isfinite(K)):
        raise CameraModelError(f"K contains non-finite values: {K.ravel().tolist()}")
    if not np.any(K):
        raise CameraModelError("K is all zeros: the camera is uncalibrated (CameraInfo convention); "
                               "calibrate it or set the intrinsics explicitly")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (fx > 0 and fy > 0):
        raise CameraModelError(f"focal lengths fx={fx}, fy={fy} are invalid; expected fx > 0 and fy > 0")
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise CameraModelError(f"K = {K.ravel().tolist()} is not an intrinsic matrix; expected "
                               "[fx, s, cx, 0, fy, cy, 0, 0, 1]")
    # A principal point somewhat off-centre is legal (cropped or shifted sensors); one further
    # than an image size outside the image is a broken calibration (e.g. wrong resolution).
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        raise CameraModelError(f"principal point ({cx}, {cy}) is more than an image size outside "
                               f"the {width}x{height} image; expected cx in [{-width}, {2 * width}], "
                               f"cy in [{-height}, {2 * height}]")
    return K


def _check_distortion(model: str, d: Sequence[float]) -> tuple[str, np.ndarray]:
    if not isinstance(model, str):
        raise CameraModelError(f"distortion model must be a string, got {type(model).__name__}")
    name = model.strip().lower()
    try:
        D = np.array(d if d is not None else [], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise CameraModelError(f"D must be a sequence of numbers, got {d!r}") from None
    if not np.all(np.isfinite(D)):
        raise CameraModelError(f"D contains non-finite values: {D.tolist()}")
    if name not in MODELS and name != "":
        raise CameraModelError(f"unknown distortion model {model!r}; allowed: {', '.join(MODELS)}")
    if not np.any(D):                                   # empty or all zeros: ideal pinhole
        return "none", np.zeros(0)
    if name in ("", "none"):
        raise CameraModelError(f"distortion model {model!r} has non-zero D {D.tolist()}; name the "
                               f"model ({', '.join(MODELS[1:])}) or give an empty D")
    allowed = _D_LENGTHS[name]
    if D.size not in allowed:
        raise CameraModelError(f"distortion model {name!r} needs D of length "
                               f"{' or '.join(map(str, allowed))}, got {D.size}: {D.tolist()}")
    if name == "rational_polynomial" and D.size == 5:
        D = np.concatenate([D, np.zeros(3)])
    return name, D
