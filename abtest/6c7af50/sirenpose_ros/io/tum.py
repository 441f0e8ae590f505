"""TUM RGB-D trajectory files: one pose per line, ``timestamp tx ty tz qx qy qz qw``.

The pose on each line is T_world_cam (camera-to-world): (tx, ty, tz) is the camera centre in
the world frame and (qx, qy, qz, qw) the camera's orientation, Hamilton convention, scalar last.

Timestamps are integer nanoseconds in memory and seconds with 9 decimals on disk. They are
parsed as decimal text (never through a float), so every stamp round-trips exactly: a float64
holds only ~16 significant digits, and 1.7e9 s written in ns needs 19.
"""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from os import PathLike

import numpy as np

_NS_PER_S = 10**9


# ---------------------------------------------------------------------------------------------
# Rotations <-> quaternions (xyzw)
# ---------------------------------------------------------------------------------------------

def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) as (x, y, z, w), w >= 0.

    Shepperd's method: of the four algebraically equivalent formulas, each one divides by a
    different quaternion component; per matrix we use the one whose component is largest, so
    no division by a near-zero value happens, including at 180 degrees (w = 0).
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) rotation matrices, got shape {R.shape}")
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    tr = r00 + r11 + r22
    # Each candidate equals 4 * q_k * (x, y, z, w) for its pivot component k.
    cands = np.stack([
        np.stack([1 + r00 - r11 - r22, r01 + r10, r02 + r20, r21 - r12], -1),   # pivot x
        np.stack([r01 + r10, 1 - r00 + r11 - r22, r12 + r21, r02 - r20], -1),   # pivot y
        np.stack([r02 + r20, r12 + r21, 1 - r00 - r11 + r22, r10 - r01], -1),   # pivot z
        np.stack([r21 - r12, r02 - r20, r10 - r01, 1 + tr], -1),                # pivot w
    ], -2)                                                                       # (..., 4, 4)
    pivot = np.argmax(np.stack([r00, r11, r22, tr], -1), axis=-1)
    q = np.take_along_axis(cands, pivot[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    # q and -q are the same rotation; pick w >= 0 so the output is canonical.
    return np.where(q[..., 3:4] < 0, -q, q)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) as (x, y, z, w) -> rotation matrices (..., 3, 3).

    The input is normalised first (files often carry 6-digit quaternions); a zero-norm
    quaternion raises ValueError.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"expected (..., 4) quaternions, got shape {q.shape}")
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(~(n > 1e-12)):
        raise ValueError("quaternion with zero (or non-finite) norm")
    x, y, z, w = np.moveaxis(q / n, -1, 0)
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], -1)
    return R.reshape(q.shape[:-1] + (3, 3))


# ---------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------

def _ns_to_seconds_text(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), _NS_PER_S)
    return f"{sign}{sec}.{frac:09d}"


def _seconds_text_to_ns(text: str) -> int:
    """Decimal seconds text -> int ns, exact (rounds half-even beyond the 9th decimal)."""
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"bad timestamp {text!r}") from None
    if not d.is_finite():
        raise ValueError(f"bad timestamp {text!r}")
    return int((d * _NS_PER_S).to_integral_value(rounding=ROUND_HALF_EVEN))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def write_tum(path: str | PathLike, stamps_ns: np.ndarray, T: np.ndarray,
              header: str | None = "timestamp tx ty tz qx qy qz qw") -> None:
    """Write poses T (N, 4, 4) (T_world_cam) with int-ns stamps (N,) as a TUM file.

    Numbers are written with Python's shortest round-trip float repr, so reading the file back
    gives the same float64 positions and quaternions bit for bit.
    """
    stamps = np.asarray(stamps_ns)
    T = np.asarray(T, dtype=np.float64)
    if stamps.ndim != 1 or not np.issubdtype(stamps.dtype, np.integer):
        raise ValueError("stamps_ns must be a 1-D integer array (nanoseconds)")
    if T.shape != (stamps.shape[0], 4, 4):
        raise ValueError(f"T must be ({stamps.shape[0]}, 4, 4), got {T.shape}")
    values = np.concatenate([T[:, :3, 3], matrix_to_quat(T[:, :3, :3])], axis=1)
    lines = [] if header is None else ["# " + header]
    lines += [_ns_to_seconds_text(s) + " " + " ".join(map(repr, row))
              for s, row in zip(stamps.tolist(), values.tolist())]
    with open(path, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")


def read_tum(path: str | PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM file -> (stamps_ns (N,) int64, T_world_cam (N, 4, 4) float64).

    Blank lines and lines starting with '#' are skipped; fields may be separated by spaces,
    tabs or commas. Quaternions are normalised.
    """
    stamps: list[int] = []
    rows: list[list[str]] = []
    with open(path, encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.replace(",", " ").split()
            if len(fields) != 8:
                raise ValueError(f"{path}:{lineno}: expected 8 fields "
                                 f"(timestamp tx ty tz qx qy qz qw), got {len(fields)}")
            try:
                stamps.append(_seconds_text_to_ns(fields[0]))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            rows.append(fields[1:])
    n = len(rows)
    values = np.array(rows, dtype=np.float64).reshape(n, 7)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, 3] = values[:, :3]
    if n:
        T[:, :3, :3] = quat_to_matrix(values[:, 3:])
    return np.array(stamps, dtype=np.int64), T
