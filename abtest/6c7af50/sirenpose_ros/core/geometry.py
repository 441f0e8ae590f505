"""Rigid-body geometry for the estimator: SO(3)/SE(3) exp/log, triangulation, reprojection.

Everything is vectorised over leading dimensions and works in float64.
Conventions:
- ``T_a_b`` is a 4x4 homogeneous matrix mapping points from frame b to frame a.
- An se(3) tangent vector is ``xi = (rho, phi)``: translation part first, rotation second,
  matching the (x, y, z, rx, ry, rz) order of the pose covariance in FrameResult.
- Normalized image coordinates are ``(x/z, y/z)`` in the optical frame (undistorted).
"""
from __future__ import annotations

import math

import numpy as np

_SMALL = 1e-8


def skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrices: skew(a) @ b == cross(a, b)."""
    v = np.asarray(v, dtype=np.float64)
    S = np.zeros(v.shape[:-1] + (3, 3))
    S[..., 0, 1] = -v[..., 2]
    S[..., 0, 2] = v[..., 1]
    S[..., 1, 0] = v[..., 2]
    S[..., 1, 2] = -v[..., 0]
    S[..., 2, 0] = -v[..., 1]
    S[..., 2, 1] = v[..., 0]
    return S


def _sinc_coeffs(theta: np.ndarray):
    """A = sin(t)/t, B = (1-cos t)/t^2, C = (t - sin t)/t^3, with Taylor series near 0."""
    t2 = theta * theta
    small = theta < 1e-4
    ts = np.where(small, 1.0, theta)
    A = np.where(small, 1.0 - t2 / 6.0, np.sin(ts) / ts)
    B = np.where(small, 0.5 - t2 / 24.0, (1.0 - np.cos(ts)) / (ts * ts))
    C = np.where(small, 1.0 / 6.0 - t2 / 120.0, (ts - np.sin(ts)) / (ts * ts * ts))
    return A, B, C


def so3_exp(phi: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) -> rotation matrices (..., 3, 3) (Rodrigues)."""
    phi = np.asarray(phi, dtype=np.float64)
    if phi.shape == (3,):
        A, B, _, K = _exp_coeffs_one(phi)
        return np.eye(3) + A * K + B * (K @ K)
    theta = np.linalg.norm(phi, axis=-1)
    A, B, _ = _sinc_coeffs(theta)
    K = skew(phi)
    return np.eye(3) + A[..., None, None] * K + B[..., None, None] * (K @ K)


def _exp_coeffs_one(phi: np.ndarray):
    """A, B, C of :func:`_sinc_coeffs` and skew(phi) for one rotation vector, in scalar
    arithmetic: the solvers exponentiate single small vectors thousands of times (two-view
    refinement) and the array path's ~30 operations on one element cost ~10x more."""
    wx, wy, wz = float(phi[0]), float(phi[1]), float(phi[2])
    t2 = wx * wx + wy * wy + wz * wz
    th = math.sqrt(t2)
    if th < 1e-4:                    # same series as _sinc_coeffs
        A, B, C = 1.0 - t2 / 6.0, 0.5 - t2 / 24.0, 1.0 / 6.0 - t2 / 120.0
    else:
        sn = math.sin(th)
        A, B, C = sn / th, (1.0 - math.cos(th)) / t2, (th - sn) / (t2 * th)
    K = np.array([[0.0, -wz, wy], [wz, 0.0, -wx], [-wy, wx, 0.0]])
    return A, B, C, K


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> unit quaternions (..., 4) as (w, x, y, z) with w >= 0.

    Picks, per matrix, the largest of the four candidate denominators (Shepperd), so the result
    is accurate for every rotation, including those near pi where the trace method fails.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape == (3, 3):
        return _quaternion_one(R)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    tr = m00 + m11 + m22
    cand = np.stack([tr, m00, m11, m22], axis=-1)
    k = np.argmax(cand, axis=-1)
    q = np.empty(R.shape[:-2] + (4,))
    # Case w largest.
    s = np.sqrt(np.maximum(1.0 + tr, _SMALL)) * 2.0
    qw = np.stack([0.25 * s, (R[..., 2, 1] - R[..., 1, 2]) / s,
                   (R[..., 0, 2] - R[..., 2, 0]) / s, (R[..., 1, 0] - R[..., 0, 1]) / s], -1)
    s = np.sqrt(np.maximum(1.0 + m00 - m11 - m22, _SMALL)) * 2.0
    qx = np.stack([(R[..., 2, 1] - R[..., 1, 2]) / s, 0.25 * s,
                   (R[..., 0, 1] + R[..., 1, 0]) / s, (R[..., 0, 2] + R[..., 2, 0]) / s], -1)
    s = np.sqrt(np.maximum(1.0 - m00 + m11 - m22, _SMALL)) * 2.0
    qy = np.stack([(R[..., 0, 2] - R[..., 2, 0]) / s, (R[..., 0, 1] + R[..., 1, 0]) / s,
                   0.25 * s, (R[..., 1, 2] + R[..., 2, 1]) / s], -1)
    s = np.sqrt(np.maximum(1.0 - m00 - m11 + m22, _SMALL)) * 2.0
    qz = np.stack([(R[..., 1, 0] - R[..., 0, 1]) / s, (R[..., 0, 2] + R[..., 2, 0]) / s,
                   (R[..., 1, 2] + R[..., 2, 1]) / s, 0.25 * s], -1)
    allq = np.stack([qw, qx, qy, qz], axis=-2)                     # (..., 4 cases, 4)
    q = np.take_along_axis(allq, k[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def _quaternion_one(R: np.ndarray) -> np.ndarray:
    """rotation_to_quaternion of one matrix with scalar arithmetic (same cases and formulas; the
    pose path converts a few single rotations per frame, where array overhead dominates)."""
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = R.tolist()
    tr = m00 + m11 + m22
    cand = (tr, m00, m11, m22)
    k = cand.index(max(cand))          # first maximum, as np.argmax
    if k == 0:
        s = math.sqrt(max(1.0 + tr, _SMALL)) * 2.0
        q = (0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s)
    elif k == 1:
        s = math.sqrt(max(1.0 + m00 - m11 - m22, _SMALL)) * 2.0
        q = ((m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s)
    elif k == 2:
        s = math.sqrt(max(1.0 - m00 + m11 - m22, _SMALL)) * 2.0
        q = ((m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s)
    else:
        s = math.sqrt(max(1.0 - m00 - m11 + m22, _SMALL)) * 2.0
        q = ((m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s)
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3), angle in [0, pi].

    Goes through the quaternion: ``phi = 2 atan2(|v|, w) v/|v|`` is well conditioned both near
    0 (series 2/w) and near pi (w -> 0), unlike arccos of the trace.
    """
    q = rotation_to_quaternion(R)
    w, v = q[..., 0], q[..., 1:]
    n = np.linalg.norm(v, axis=-1)
    small = n < 1e-7
    ns = np.where(small, 1.0, n)
    scale = np.where(small, 2.0 / np.maximum(w, _SMALL) * (1.0 - n * n / (3.0 * w * w + _SMALL)),
                     2.0 * np.arctan2(n, w) / ns)
    return v * scale[..., None]


def se3_exp(xi: np.ndarray) -> np.ndarray:
    """Twists (..., 6) = (rho, phi) -> 4x4 transforms (..., 4, 4)."""
    xi = np.asarray(xi, dtype=np.float64)
    if xi.shape == (6,):
        return _se3_exp_one(xi)
    rho, phi = xi[..., :3], xi[..., 3:]
    theta = np.linalg.norm(phi, axis=-1)
    A, B, C = _sinc_coeffs(theta)
    K = skew(phi)
    KK = K @ K
    R = np.eye(3) + A[..., None, None] * K + B[..., None, None] * KK
    V = np.eye(3) + B[..., None, None] * K + C[..., None, None] * KK
    T = np.zeros(xi.shape[:-1] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = np.einsum("...ij,...j->...i", V, rho)
    T[..., 3, 3] = 1.0
    return T


def _se3_exp_one(xi: np.ndarray) -> np.ndarray:
    """se3_exp of one twist with scalar coefficients (see :func:`_exp_coeffs_one`)."""
    A, B, C, K = _exp_coeffs_one(xi[3:])
    KK = K @ K
    T = np.eye(4)
    T[:3, :3] += A * K + B * KK
    T[:3, 3] = (np.eye(3) + B * K + C * KK) @ xi[:3]
    return T


def se3_log(T: np.ndarray) -> np.ndarray:
    """4x4 transforms (..., 4, 4) -> twists (..., 6) = (rho, phi); inverse of se3_exp."""
    T = np.asarray(T, dtype=np.float64)
    phi = so3_log(T[..., :3, :3])
    if T.shape == (4, 4):
        return _se3_log_one(T, phi)
    theta = np.linalg.norm(phi, axis=-1)
    K = skew(phi)
    KK = K @ K
    # V^-1 = I - K/2 + D K^2 with D = (1 - A/(2B)) / theta^2 (series 1/12 + theta^2/720 near 0).
    A, B, _ = _sinc_coeffs(theta)
    small = theta < 1e-4
    ts = np.where(small, 1.0, theta)
    D = np.where(small, 1.0 / 12.0 + theta * theta / 720.0,
                 (1.0 - A / (2.0 * np.where(small, 1.0, B))) / (ts * ts))
    Vinv = np.eye(3) - 0.5 * K + D[..., None, None] * KK
    rho = np.einsum("...ij,...j->...i", Vinv, T[..., :3, 3])
    return np.concatenate([rho, phi], axis=-1)


def _se3_log_one(T: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """se3_log of one transform given its rotation vector ``phi``: the same V^-1 with scalar
    coefficients (the motion model calls it once per frame)."""
    wx, wy, wz = float(phi[0]), float(phi[1]), float(phi[2])
    t2 = wx * wx + wy * wy + wz * wz
    th = math.sqrt(t2)
    if th < 1e-4:                    # same series as the batched path
        D = 1.0 / 12.0 + t2 / 720.0
    else:
        A, B = math.sin(th) / th, (1.0 - math.cos(th)) / t2
        D = (1.0 - A / (2.0 * B)) / t2
    K = np.array([[0.0, -wz, wy], [wz, 0.0, -wx], [-wy, wx, 0.0]])
    Vinv = np.eye(3) - 0.5 * K + D * (K @ K)
    return np.concatenate([Vinv @ T[:3, 3], phi])


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rotation (..., 3, 3) and translation (..., 3) -> 4x4 transforms."""
    R = np.asarray(R, dtype=np.float64)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4) without a general matrix inverse."""
    T = np.asarray(T, dtype=np.float64)
    Rt = np.swapaxes(T[..., :3, :3], -1, -2)
    return make_T(Rt, -np.einsum("...ij,...j->...i", Rt, T[..., :3, 3]))


def compose(*Ts: np.ndarray) -> np.ndarray:
    """T_a_b, T_b_c, ... -> T_a_... (matrix product, left to right)."""
    out = np.asarray(Ts[0], dtype=np.float64)
    for T in Ts[1:]:
        out = out @ T
    return out


def transform(T: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Apply one 4x4 transform to points (N, 3)."""
    return X @ T[:3, :3].T + T[:3, 3]


def project(T_cam_world: np.ndarray, X_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> normalized coordinates (N, 2) and depths (N,) in the camera."""
    Xc = transform(T_cam_world, X_world)
    z = Xc[:, 2]
    zs = np.where(np.abs(z) < 1e-12, 1e-12, z)
    return Xc[:, :2] / zs[:, None], z


def reprojection_error(T_cam_world: np.ndarray, X_world: np.ndarray, xn: np.ndarray) -> np.ndarray:
    """Residual vectors (N, 2) = projection - observation, in normalized coordinates.

    Points behind the camera get an infinite residual so that every threshold rejects them.
    """
    proj, z = project(T_cam_world, X_world)
    r = proj - xn
    r[z <= 0] = np.inf
    return r


def triangulate(P1: np.ndarray, P2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of N points seen in two views, batched.

    P1, P2: 3x4 projection matrices in normalized coordinates (i.e. T_cam_world[:3]).
    x1, x2: (N, 2) normalized coordinates. Returns (N, 3) points; a point at infinity
    (homogeneous w ~ 0) comes back as NaN.
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    A = np.empty((x1.shape[0], 4, 4))
    A[:, 0] = x1[:, :1] * P1[2] - P1[0]
    A[:, 1] = x1[:, 1:2] * P1[2] - P1[1]
    A[:, 2] = x2[:, :1] * P2[2] - P2[0]
    A[:, 3] = x2[:, 1:2] * P2[2] - P2[1]
    # Row scaling improves conditioning without changing the solution.
    A /= np.linalg.norm(A, axis=2, keepdims=True) + 1e-300
    _, _, Vt = np.linalg.svd(A)
    Xh = Vt[:, -1]
    w = Xh[:, 3]
    ok = np.abs(w) > 1e-12
    X = np.full((x1.shape[0], 3), np.nan)
    X[ok] = Xh[ok, :3] / w[ok, None]
    return X


def bearings(xn: np.ndarray) -> np.ndarray:
    """Normalized coordinates (N, 2) -> unit bearing vectors (N, 3)."""
    b = np.concatenate([xn, np.ones((xn.shape[0], 1))], axis=1)
    return b / np.linalg.norm(b, axis=1, keepdims=True)


def parallax_deg(C1: np.ndarray, C2: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Angle (degrees) at each point X (N, 3) between the rays to camera centres C1 and C2."""
    return _angle_deg(X - C1, X - C2)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between row vectors; atan2(|a x b|, a.b) keeps full precision at small angles."""
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.sum(a * b, axis=1)))


def ray_angle_deg(R_2_1: np.ndarray, xn1: np.ndarray, xn2: np.ndarray) -> np.ndarray:
    """Angle (degrees) between corresponding bearings after removing the rotation R_2_1.

    A translation-free measure of parallax, usable before any point is triangulated.
    """
    return _angle_deg(bearings(xn1) @ R_2_1.T, bearings(xn2))


def essential_from_pose(T_2_1: np.ndarray) -> np.ndarray:
    """Essential matrix with x2^T E x1 = 0 for normalized coordinates of views 1 and 2."""
    return skew(T_2_1[:3, 3]) @ T_2_1[:3, :3]


def epipolar_offset(E: np.ndarray, xn1: np.ndarray, xn2: np.ndarray) -> np.ndarray:
    """Signed perpendicular offset vectors (N, 2) of xn2 from its epipolar line E x1.

    The offset is along the line's normal, in normalized coordinates; its norm is the point-line
    distance. A vector (not just a distance) lets neighbours compare their motions.
    """
    h1 = np.concatenate([xn1, np.ones((xn1.shape[0], 1))], axis=1)
    h2 = np.concatenate([xn2, np.ones((xn2.shape[0], 1))], axis=1)
    line = h1 @ E.T                                      # (a, b, c): a x + b y + c = 0
    nrm = np.linalg.norm(line[:, :2], axis=1) + 1e-300
    d = np.sum(h2 * line, axis=1) / nrm
    return (line[:, :2] / nrm[:, None]) * d[:, None]


def kabsch_rotation(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Rotation R minimising sum w |R a - b|^2 for direction sets a, b (..., N, 3), batched.

    Returns (..., 3, 3) proper rotations (det +1). Used for the pure-rotation model of bearings
    (b = R a) where it is the exact least-squares solution.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if w is not None:
        a = a * np.asarray(w, dtype=np.float64)[..., None]
    M = np.swapaxes(b, -1, -2) @ a                       # sum_n w b a^T
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    d = np.where(d == 0, 1.0, d)
    D = np.zeros(M.shape)
    D[..., 0, 0] = 1.0
    D[..., 1, 1] = 1.0
    D[..., 2, 2] = d
    return U @ D @ Vt


def rotation_residual(R: np.ndarray, xn1: np.ndarray, xn2: np.ndarray) -> np.ndarray:
    """Residual vectors (N, 2), normalized coordinates, of xn2 against the pure-rotation
    prediction proj(R bearing(xn1)); infinite where the rotated ray points backwards."""
    h = np.concatenate([xn1, np.ones((xn1.shape[0], 1))], axis=1) @ np.asarray(R).T
    z = h[:, 2]
    r = h[:, :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None] - xn2
    r[z <= 0] = np.inf
    return r
