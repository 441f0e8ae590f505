"""Sliding-window monocular visual odometry: two-view initialisation, PnP tracking, keyframes,
windowed bundle adjustment, landmark culling, covariance, velocity, loss and re-initialisation.

Inputs are per-frame tracks in *normalized* coordinates (undistorted, x/z, y/z) with stable ids;
the camera model stays outside. Residual thresholds are given in pixels and converted with the
focal length passed per frame.

One frame is processed in two calls so that the dynamic-probability stage can sit in between:
``estimate_pose`` (pose from the map, residuals of every track against the static model) and then
``update_map(p_dynamic)`` (keyframe decision, triangulation, bundle adjustment, culling).

Conventions:
- World frame = the optical frame of the first initialisation's reference camera.
- Monocular scale is fixed at initialisation: the median depth of the initial landmarks in the
  reference camera is 1 (scene units). After a loss the map is rebuilt from the last well-tracked
  frame, whose pose continues the trajectory; the new map's scale is set so that its median depth
  in that frame equals the old map's median depth there, which keeps the scale roughly continuous
  but not exactly (the scale can drift at each re-initialisation).
- Before a map exists (first initialisation, or after a loss) a frame gets a rotation-only pose
  (translation held) while the camera barely translates, else a provisional two-view pose
  w.r.t. the initialisation reference when that is determinate, else none; both are in the
  world frame and scale that the map will have.
- Pose covariance: 6x6 over (x, y, z, rx, ry, rz) of T_world_cam, position and rotation
  perturbations both in the world frame, in scene units and radians, from the pose-only
  Gauss-Newton's information matrix scaled by the measured residual variance.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from sirenpose_ros.core.ids import lookup
from sirenpose_ros.core import geometry as geo
from sirenpose_ros.core.params import ParamSpec
from sirenpose_ros.core.types import TrackingState

PARAMS = [
    ParamSpec("window_size_keyframes", 8, "Keyframes in the sliding window (bundle adjustment span).", 3, 50),
    ParamSpec("window_fixed_keyframes", 4, "Oldest keyframes held fixed in bundle adjustment (gauge and scale). Two a short baseline apart barely hold the scale: each adjustment moved the free keyframes' scale a little and the map's scale wandered (fast: the scale over 10 frames swung by 37 % in 45 frames; 22 % with 4 fixed, see test_window_scale.py).", 1, 10),
    ParamSpec("window_kf_parallax_px", 15.0, "New keyframe when the median keypoint motion since the last keyframe exceeds this (pixels).", 1.0, 500.0),
    ParamSpec("window_kf_track_ratio", 0.7, "New keyframe when fewer than this share of the last keyframe's landmarks are still tracked.", 0.0, 1.0),
    ParamSpec("window_kf_max_frames", 15, "New keyframe at least every this many frames.", 1, 1000),
    ParamSpec("window_kf_few_landmarks_min_frames", 3, "A keyframe asked for only because fewer than 3 x window_min_inliers landmarks are tracked comes at most every this many frames. A large moving object hiding the map asked for one every frame: keyframes a frame apart add no landmarks (no baseline) and push the wide-baseline keyframes out of the window, and the map's scale then rested on baselines of a few mm (large_dynamic seed 5: ATE 2.54 -> 1.95 %).", 1, 1000),
    ParamSpec("window_ba_iterations", 5, "Levenberg-Marquardt iterations of the windowed bundle adjustment (keyframes only).", 0, 100),
    ParamSpec("window_pose_iterations", 6, "Gauss-Newton iterations of the per-frame pose refinement.", 1, 50),
    ParamSpec("window_huber_px", 1.0, "Scale of the robust reprojection loss (pixels): Huber threshold, or Cauchy scale.", 0.05, 50.0),
    ParamSpec("window_robust_loss", "cauchy", "Robust loss of pose refinement and bundle adjustment. 'cauchy' fades out large residuals (moving points barely pull the pose before they are flagged); 'huber' bounds their influence only linearly.", choices=("huber", "cauchy")),
    ParamSpec("window_inlier_px", 2.5, "Reprojection error (pixels) below which an observation is an inlier.", 0.1, 50.0),
    ParamSpec("window_min_inliers", 15, "Tracking is lost below this many pose inliers.", 6, 1000),
    ParamSpec("window_init_min_parallax_deg", 0.4, "Median rotation-compensated parallax (degrees) needed to initialise.", 0.1, 45.0),
    ParamSpec("window_init_inlier_px", 1.0, "Epipolar (Sampson) distance (pixels) of an inlier when initialising.", 0.1, 20.0),
    ParamSpec("window_init_max_depth_error", 0.08, "Initialise only when the median relative depth uncertainty of the initial landmarks (from the two-view pose covariance and the image noise) is below this: the gate that adapts to the number of tracks and the baseline geometry.", 0.001, 10.0),
    ParamSpec("window_init_min_points", 25, "Triangulated points needed to initialise.", 8, 5000),
    ParamSpec("window_init_homography_ratio", 0.9, "Refuse initialisation while a homography explains this share of the essential-matrix inliers (rotation only or planar).", 0.0, 1.0),
    ParamSpec("window_tri_min_parallax_deg", 0.5, "Minimum parallax angle (degrees) to triangulate a new landmark.", 0.01, 45.0),
    ParamSpec("window_tri_check_window", True, "A new landmark (triangulated from the oldest and the newest keyframe that saw its track) must also reproject within window_inlier_px in every other window keyframe that saw it. A point moving along the baseline stays on its epipolar lines and triangulates cleanly from two views at a wrong depth; the keyframes in between see the inconsistency (close_object seed 2: object points became landmarks 8-14x too near and the ATE was 2.7 %, 0.75 % with the check; seed 0 fast 0.69 -> 0.50 %).", None, None),
    ParamSpec("window_tri_max_depth_error", 0.25, "A new landmark's relative depth uncertainty must be below this: its error along the epipolar line (the larger of the two-view noise, sqrt(2) times the tracking residual sigma, and the track's own epipolar residual, since a track that drifted across the line drifted along it as well) over its parallax in pixels. The parallax gate alone passed drifting far tracks just above window_tri_min_parallax_deg, placed 2-4x too near; being near they held the translation of the poses after them (close_object seeds 3 and 4: 4.2 and 4.7 % ATE, 0.8 and 1.2 % with this gate).", 0.001, 100.0),
    ParamSpec("window_ransac_iterations", 100, "RANSAC iterations of PnP when the predicted pose fails.", 10, 10000),
    ParamSpec("window_dynamic_threshold", 0.5, "Keypoints above this dynamic probability are not used to initialise, triangulate or seed PnP.", 0.0, 1.0),
    ParamSpec("window_dynamic_cull", 0.7, "Landmarks above this dynamic probability are removed.", 0.0, 1.0),
    ParamSpec("window_dynamic_weighting", True, "Weight reprojection residuals by 1 - p_dynamic (off: every landmark counts fully).", None, None),
    ParamSpec("window_rotation_only", True, "Before (re-)initialisation, output rotation-only poses (translation held at the reference's) while a pure rotation explains the tracks: a nearly still or purely rotating camera is tracked instead of waiting for parallax that never comes.", None, None),
    ParamSpec("window_rotation_inlier_px", 1.0, "Residual (pixels) of a track against the pure-rotation model below which it is an inlier; a static point's residual is its parallax, so this bounds the translation the rotation-only pose ignores.", 0.1, 20.0),
    ParamSpec("window_rotation_max_parallax_px", 0.3, "Rotation-only poses only while the median residual of the usable tracks against the rotation model (their parallax) is below this (pixels): the held translation is then below about this / focal of the scene depth.", 0.01, 20.0),
    ParamSpec("window_rotation_min_inlier_ratio", 0.6, "Rotation-only poses need this share of the usable tracks as inliers (a translating camera loses them as parallax grows).", 0.0, 1.0),
    ParamSpec("window_rotation_hypotheses", 64, "Two-point RANSAC hypotheses of the pure-rotation model.", 8, 2000),
    ParamSpec("window_rotation_translation_std", 0.5, "Standard deviation of each position coordinate of a rotation-only pose, in units of the reference's median scene depth (large: the translation is held, not measured).", 0.0, 1000.0),
    ParamSpec("window_provisional_poses", True, "Before (re-)initialisation, when no rotation-only pose holds, publish the two-view pose of the frame w.r.t. the reference (essential matrix; translation scaled as the map will be: median depth of its inliers in the reference = the reference's depth target) if its position is determinate (window_provisional_max_position): frames before the map get a pose in the map's world frame and scale.", None, None),
    ParamSpec("window_async_init", True, "Staged mode (the live node): the two-view analysis before a map exists (essential-matrix candidates, their polish and gates, the initial map and its bundle adjustment: 80-190 ms per attempt) runs in the map stage instead of the pose stage, which keeps publishing rotation-only poses meanwhile; the map then starts from the newest frame the map stage analysed, and the frames after it are tracked on it. Off: each frame is analysed on the pose stage (its TF waits, and a 60 Hz camera drops the frames behind it), as in frame-after-frame processing, which always does so; provisional two-view poses (window_provisional_poses) exist only then.", None, None),
    ParamSpec("window_provisional_max_position", 0.002, "A provisional two-view pose is published only while its position uncertainty (1 sigma of the translation direction and of the scale, and the spread of rival two-view solutions) is below this share of the reference's median scene depth.", 0.0, 1.0),
    ParamSpec("window_provisional_max_depth_error", 0.2, "A provisional two-view pose is published only while the median relative depth uncertainty of its points (see window_init_max_depth_error) is below this.", 0.001, 10.0),
    ParamSpec("window_provisional_max_rotation_deg", 0.1, "A provisional two-view pose is published only while its rotation uncertainty (1 sigma, and the spread of rival solutions) is below this (degrees).", 0.0, 10.0),
    ParamSpec("window_init_score_sigmas", 4.0, "Two-view solutions are scored by their Sampson residuals truncated at this many times the inlier noise of the best-fitting solution (at most window_init_inlier_px): a wrong short-baseline solution that gains a few outliers but fits the static tracks worse then scores worse.", 1.0, 100.0),
    ParamSpec("window_init_track_weighting", True, "Two-view geometry before initialisation: after the Huber polish, refine again with Cauchy weights at the inliers' robust noise level, so that the consistent tracks, not the faint or drifting ones (low texture), decide the solution and the covariance and depth uncertainty that gate provisional poses; the map's own gates keep every inlier alike (off: every inlier counts alike everywhere).", None, None),
    ParamSpec("window_init_common_polish", True, "Two-view candidates (RANSAC runs, each polished on its own inliers) are polished once more on every correspondence with one robust cost at the scoring scale before they are compared: polished on different inlier sets they can rest in different basins of a flat valley (forward motion on faint texture: translation directions 4-13 degrees apart within 2-9 % of the score) and read as an ambiguity that more parallax never resolves, since the tracks' noise grows with it (low_texture seed 4: initialised at frame 57 of 90). A candidate moves only if its truncated score improves.", None, None),
    ParamSpec("window_init_rival_cost", 2.0, "Two-view solutions whose truncated (MSAC) cost exceeds the best one's by less than this many times the cost of one truncated residual are rivals: a provisional pose needs every rival to agree with it.", 0.0, 100.0),
    ParamSpec("window_coverage_cell_px", 32.0, "Cell size (pixels) for the spatial coverage of a model's inliers: with several rigid motions in view, the model supported over more of the image (the background) wins over a larger but compact moving object.", 4.0, 1000.0),
    ParamSpec("window_motion_span_frames", 3, "Before initialisation, tracks are tested against the dominant (widest-spread) pure rotation over this many frames; those that do not follow it are reported to the dynamic graph, so a moving object is kept out of the initialisation.", 1, 30),
    ParamSpec("window_static_world", False, "Ablation: ignore dynamic probabilities everywhere in the estimator (every track counts as static, no weighting, no culling).", None, None),
    ParamSpec("window_velocity_frames", 3, "Frames spanned by the finite-difference velocity.", 1, 30),
]


@dataclass
class Keyframe:
    stamp_ns: int
    T_cw: np.ndarray          # 4x4 world -> camera
    ids: np.ndarray           # (K,) track ids observed, sorted
    xn: np.ndarray            # (K, 2) normalized coordinates of those ids


@dataclass
class PoseEstimate:
    """Result of :meth:`SlidingWindowEstimator.estimate_pose` for the current frame."""
    state: TrackingState
    T_world_cam: np.ndarray | None
    residual_px: np.ndarray            # (N, 2) static-model residual per track, NaN = unknown
    has_landmark: np.ndarray           # (N,) bool
    inliers: np.ndarray                # (N,) bool, used by the pose
    message: str = ""
    reset: bool = False
    # With a pose: what update_map will return for it (the pose is final once estimated, so a
    # caller can publish it before the motion graph and the map update).
    covariance: np.ndarray | None = None
    velocity_world: np.ndarray | None = None


@dataclass
class WindowResult:
    """Result of :meth:`SlidingWindowEstimator.update_map` (final for the frame)."""
    state: TrackingState
    T_world_cam: np.ndarray | None
    covariance: np.ndarray | None
    velocity_world: np.ndarray | None
    is_keyframe: bool
    landmark_depth: np.ndarray         # (N,) depth of each track's landmark in this camera, NaN none
    message: str = ""
    reset: bool = False
    timings_ms: dict = field(default_factory=dict)
    init_pending: bool = False         # a two-view initialisation waits for the map stage


def _proj_jacobians(Xc: np.ndarray, f: float):
    """Residual Jacobians (pixels) of the projection of camera points Xc (N, 3).

    Returns J_x (N, 2, 3) w.r.t. Xc and J_pose (N, 2, 6) w.r.t. a left perturbation
    (rho, phi) of T_cam_world: Xc' = exp(phi) Xc + rho.
    """
    x, y, z = Xc[:, 0], Xc[:, 1], Xc[:, 2]
    iz = 1.0 / z
    Jx = np.zeros((Xc.shape[0], 2, 3))
    Jx[:, 0, 0] = f * iz
    Jx[:, 0, 2] = -f * x * iz * iz
    Jx[:, 1, 1] = f * iz
    Jx[:, 1, 2] = -f * y * iz * iz
    Jp = np.concatenate([Jx, -Jx @ geo.skew(Xc)], axis=2)
    return Jx, Jp


def robust_weights(err: np.ndarray, scale: float, loss: str) -> np.ndarray:
    """IRLS weights of the robust loss for residual norms ``err``."""
    if loss == "cauchy":
        return 1.0 / (1.0 + (err / scale) ** 2)
    return _huber_weights(err, scale)


def robust_cost(err: np.ndarray, scale: float, loss: str) -> np.ndarray:
    if loss == "cauchy":
        return 0.5 * scale * scale * np.log1p((err / scale) ** 2)
    return _huber_cost(err, scale)


def _huber_weights(err: np.ndarray, delta: float) -> np.ndarray:
    return np.where(err <= delta, 1.0, delta / np.maximum(err, 1e-12))


def _huber_cost(err: np.ndarray, delta: float) -> np.ndarray:
    return np.where(err <= delta, 0.5 * err * err, delta * (err - 0.5 * delta))


def refine_pose(T_cw: np.ndarray, X: np.ndarray, xn: np.ndarray, w: np.ndarray, f: float,
                scale_px: float, iterations: int, loss: str = "huber") -> tuple[np.ndarray, np.ndarray]:
    """Pose-only robust Gauss-Newton. Returns the refined T_cam_world and the 6x6 information
    matrix (pixels^-2, left perturbation of T_cam_world) at the solution."""
    T = T_cw.copy()
    H = np.eye(6) * 1e-9
    X = np.asarray(X, np.float64)
    for _ in range(iterations):
        Xc = geo.transform(T, X)
        ok = Xc[:, 2] > 1e-6
        if ok.sum() < 6:
            break
        if not ok.all():
            Xc, xo, wo = Xc[ok], xn[ok], w[ok]
        else:
            xo, wo = xn, w
        # Residuals and the (2N, 6) Jacobian of the projection w.r.t. a left perturbation
        # (rho, phi), written out per column: the same numbers as _proj_jacobians' stacked
        # 2x3 @ 3x3 products, without their per-point overhead.
        x, y, iz = Xc[:, 0], Xc[:, 1], 1.0 / Xc[:, 2]
        u, v = x * iz, y * iz
        r = np.empty((u.size, 2))
        r[:, 0] = (u - xo[:, 0]) * f
        r[:, 1] = (v - xo[:, 1]) * f
        fz = f * iz
        J = np.empty((u.size, 2, 6))
        J[:, 0, 0] = fz
        J[:, 0, 1] = 0.0
        J[:, 0, 2] = -fz * u
        J[:, 0, 3] = -f * u * v
        J[:, 0, 4] = f * (1.0 + u * u)
        J[:, 0, 5] = -f * v
        J[:, 1, 0] = 0.0
        J[:, 1, 1] = fz
        J[:, 1, 2] = -fz * v
        J[:, 1, 3] = -f * (1.0 + v * v)
        J[:, 1, 4] = f * u * v
        J[:, 1, 5] = f * u
        wt = wo * robust_weights(np.sqrt(r[:, 0] ** 2 + r[:, 1] ** 2), scale_px, loss)
        # Stacked (2N, 6) products go to BLAS; a three-operand einsum here cost 1-2 ms a frame.
        J2 = J.reshape(-1, 6)
        WJ = J2 * np.repeat(wt, 2)[:, None]
        H = WJ.T @ J2
        g = WJ.T @ r.reshape(-1)
        try:
            d = -np.linalg.solve(H + np.eye(6) * 1e-9, g)
        except np.linalg.LinAlgError:
            break
        T = geo.se3_exp(d) @ T
        if np.linalg.norm(d) < 1e-10:
            break
    return T, H


def coverage_cells(xn: np.ndarray, cell: float) -> np.ndarray:
    """Compact index (N,) of the square cell (side ``cell``, normalized units) holding each point."""
    ij = np.floor(xn / cell).astype(np.int64)
    _, inv = np.unique(ij[:, 0] * 1_000_003 + ij[:, 1], return_inverse=True)
    return inv.ravel()


def coverage(inliers: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Number of distinct cells holding an inlier, per row of ``inliers`` (M, N) bool."""
    occ = np.zeros((inliers.shape[0], int(cells.max()) + 1 if cells.size else 1), bool)
    m, n = np.nonzero(inliers)
    occ[m, cells[n]] = True
    return occ.sum(axis=1)


def fit_rotation(x1: np.ndarray, x2: np.ndarray, f: float, inlier_px: float, cell: float,
                 n_hyp: int, rng: np.random.Generator, prior: np.ndarray | None = None):
    """Robust pure-rotation model x2 ~ R x1 (normalized coordinates) of a barely translating camera.

    Hypotheses: identity, the previous frame's rotation ``prior`` and ``n_hyp`` two-point Kabsch
    fits. Each is scored by the spatial coverage of its inliers first (a compact moving object
    must not win over the background it occludes), then by the inlier count; the winner is
    refitted on its inliers. Returns (R, inliers (N,), residual norms (N,) in pixels).
    """
    n = x1.shape[0]
    b1, b2 = geo.bearings(x1), geo.bearings(x2)
    hyps = [np.eye(3)[None]]
    if prior is not None:
        hyps.append(np.asarray(prior, np.float64)[None])
    if n >= 2:
        idx = rng.integers(0, n, (int(n_hyp), 2))
        idx = idx[idx[:, 0] != idx[:, 1]]
        if idx.size:
            hyps.append(geo.kabsch_rotation(b1[idx], b2[idx]))
    Rs = np.concatenate(hyps)
    # Chord between predicted and observed bearings ~ angle; times f ~ pixels.
    err = np.linalg.norm(np.einsum("mij,nj->mni", Rs, b1) - b2[None], axis=2) * f
    inl = err < inlier_px
    score = coverage(inl, coverage_cells(x2, cell)) + inl.sum(axis=1) / (n + 1.0)
    R = Rs[int(np.argmax(score))]
    for _ in range(3):
        e = np.linalg.norm(b1 @ R.T - b2, axis=1) * f
        inl = e < inlier_px
        if inl.sum() < 2:
            break
        R = geo.kabsch_rotation(b1[inl], b2[inl])
    e = np.linalg.norm(b1 @ R.T - b2, axis=1) * f
    return R, e < inlier_px, e


def sampson_residuals(R: np.ndarray, t: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """First-order geometric (Sampson) distance of each correspondence to the epipolar geometry
    (R, t) of view 2 w.r.t. view 1, in normalized units."""
    E = geo.skew(t) @ R
    h1 = np.concatenate([x1, np.ones((x1.shape[0], 1))], axis=1)
    h2 = np.concatenate([x2, np.ones((x2.shape[0], 1))], axis=1)
    Ex1 = h1 @ E.T
    Etx2 = h2 @ E
    num = np.sum(h2 * Ex1, axis=1)
    den = np.sqrt(Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2) + 1e-300
    return num / den


def _cross3(u, v):
    """Cross product of two 3-vectors (np.cross's generality costs ~20 us per call)."""
    return np.array([u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]])


def _tangent_basis(t):
    """Two unit vectors spanning the plane orthogonal to the unit vector t."""
    a = _cross3(t, np.array([1.0, 0, 0]) if abs(t[0]) < 0.9 else np.array([0, 1.0, 0]))
    a /= np.linalg.norm(a)
    return a, _cross3(t, a)


def _perturb_relative(R, t, d, basis):
    """(R, unit t) moved by d = (rotation (3), t along the two tangent directions (2))."""
    t2 = t + d[3] * basis[0] + d[4] * basis[1]
    return geo.so3_exp(d[:3]) @ R, t2 / np.linalg.norm(t2)


def init_depth_uncertainty(R, t, cov5, sigma, x1, x2) -> np.ndarray:
    """Relative depth standard deviation (N,) of each point triangulated from the two views.

    Two sources, added in variance: the relative pose's uncertainty (5x5 covariance over rotation
    and translation direction, propagated by re-triangulating at +-1 sigma along each principal
    axis) and the image noise ``sigma`` (normalized units) of the point itself, sqrt(2) sigma /
    parallax angle. This is the quantity that decides whether an initial map is worth building:
    a short or ill-conditioned baseline gives depths that are mostly noise.
    """
    T = geo.make_T(R, t)
    z0 = geo.triangulate(np.eye(4)[:3], T[:3], x1, x2)[:, 2]
    lam, V = np.linalg.eigh(0.5 * (cov5 + cov5.T))
    basis = _tangent_basis(t)
    var = np.zeros(x1.shape[0])
    for k in range(5):       # five principal axes, each vectorised over all points
        d = V[:, k] * np.sqrt(max(lam[k], 0.0))
        R2, t2 = _perturb_relative(R, t, d, basis)
        z = geo.triangulate(np.eye(4)[:3], geo.make_T(R2, t2)[:3], x1, x2)[:, 2]
        var += (z - z0) ** 2
    alpha = np.radians(geo.ray_angle_deg(R, x1, x2))
    rel = np.sqrt(var / np.maximum(z0 * z0, 1e-300) + 2.0 * sigma * sigma / np.maximum(alpha * alpha, 1e-300))
    return np.where(np.isfinite(rel) & (z0 > 0), rel, np.inf)


def _in_front_count(R, t, x1, x2) -> int:
    """Number of correspondences triangulated in front of both views (cheirality)."""
    T = geo.make_T(R, t)
    X = geo.triangulate(np.eye(4)[:3], T[:3], x1, x2)
    with np.errstate(invalid="ignore"):
        return int(np.sum((X[:, 2] > 0) & (geo.transform(T, X)[:, 2] > 0)))


def refine_relative_pose(R: np.ndarray, t: np.ndarray, x1: np.ndarray, x2: np.ndarray,
                         huber: float, iterations: int = 20,
                         loss: str = "huber") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust Gauss-Newton on the Sampson distance over all inliers (5 DOF: rotation and the
    direction of t). RANSAC returns the best *minimal-sample* model, which on a short baseline
    can be off by degrees; this least-squares polish uses every correspondence.

    ``loss``: 'huber' (threshold ``huber``) or 'cauchy' (scale ``huber``): see :func:`robust_weights`.

    Returns R, unit t and the 5x5 Gauss-Newton information (normalized units^-2) over
    (rotation, two directions of t) at the last linearisation, weighted by the robust loss."""
    R, t = R.copy(), t / np.linalg.norm(t)
    eps = 1e-7
    perturb, tangent = _perturb_relative, _tangent_basis
    r = sampson_residuals(R, t, x1, x2)
    cost = np.sum(robust_cost(np.abs(r), huber, loss))
    lam = 1e-4
    for _ in range(iterations):
        basis = tangent(t)
        J = np.empty((r.size, 5))
        for j in range(5):        # five forward differences, each vectorised over all points
            d = np.zeros(5)
            d[j] = eps
            J[:, j] = (sampson_residuals(*perturb(R, t, d, basis), x1, x2) - r) / eps
        w = robust_weights(np.abs(r), huber, loss)
        H = (J * w[:, None]).T @ J
        g = (J * w[:, None]).T @ r
        while lam < 1e4:
            step = -np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-30), g)
            R2, t2 = perturb(R, t, step, basis)
            r2 = sampson_residuals(R2, t2, x1, x2)
            cost2 = np.sum(robust_cost(np.abs(r2), huber, loss))
            if cost2 < cost:
                break
            lam *= 10.0
        if cost2 >= cost:
            break
        converged = cost - cost2 < 1e-7 * cost
        R, t, r, cost = R2, t2, r2, cost2
        lam = max(lam / 10.0, 1e-8)
        if converged:
            break
    return R, t, H


def relative_pose_information(R: np.ndarray, t: np.ndarray, x1: np.ndarray, x2: np.ndarray,
                              scale: float, loss: str) -> np.ndarray:
    """5x5 Gauss-Newton information of the Sampson residuals at (R, unit t), weighted by the
    robust loss at ``scale``: what :func:`refine_relative_pose` returns, without moving."""
    eps = 1e-7
    basis = _tangent_basis(t)
    r = sampson_residuals(R, t, x1, x2)
    J = np.empty((r.size, 5))
    for j in range(5):
        d = np.zeros(5)
        d[j] = eps
        J[:, j] = (sampson_residuals(*_perturb_relative(R, t, d, basis), x1, x2) - r) / eps
    w = robust_weights(np.abs(r), scale, loss)
    return (J * w[:, None]).T @ J


class SlidingWindowEstimator:
    def __init__(self, cfg, async_mapping: bool = False):
        self.cfg = cfg
        # True: keyframes are inserted by MapJobs the caller runs (on another thread), never
        # inline by estimate_pose().
        self.async_mapping = async_mapping
        # The two-view initialisation also goes to the map stage (window_async_init).
        self.init_async = bool(async_mapping and cfg.window_async_init)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self.state = TrackingState.INITIALIZING
        self._clear_map()
        self._ref = None               # init reference: dict(ids, xn, T_wc, depth_target, stamp)
        self._history = deque(maxlen=max(3, int(self.cfg.window_velocity_frames) + 1))  # (stamp, T_wc)
        self._last_good = None         # dict(ids, xn, T_wc, median_depth, stamp) of last tracked frame
        self._pending = None           # data carried from estimate_pose to update_map
        self._deferred_kf = None       # keyframe decided by update_map, inserted by finish_keyframe
        self._deferred_init = None     # two-view initialisation for the map stage (init_async)
        self._init_why = None          # why the map stage's last analysis built no map
        self._init_news = None         # (message, ends a loss) of an initialisation committed by
                                       # the map stage, for the next tracked frame to report
        self._map_job_open = False     # a MapJob is running on a copy of the map (another thread)
        self.keyframe_blocked = False  # the last frame wanted a keyframe while the map was busy
        self.keyframe_blocked_since_ns = None   # ... stamp of the first of such frames in a row
        self._info = np.eye(6)
        self._sigma2 = 1.0
        self._rng = np.random.default_rng(0)     # RANSAC sampling: reproducible runs
        # Recent (sorted ids, xn) before initialisation, for the multi-frame motion evidence.
        self._recent = deque(maxlen=int(self.cfg.window_motion_span_frames))
        # A frame after the first reference has been through the motion evidence, so the dynamic
        # graph has had its chance to flag moving tracks. Before, every track's probability is
        # the graph's prior: the first frame pair would take a large moving object for the
        # world (large_dynamic seed 0: 151 of 326 tracks moving, all inliers of a two-view pose
        # 50 degrees off, 74 mm off the true position; ATE 1.30 -> 0.58 % without it).
        self._graph_informed = False

    def _clear_map(self) -> None:
        # A MapJob begun on the old map must not be committed into the new one.
        self._map_generation = getattr(self, "_map_generation", 0) + 1
        self.keyframes: list[Keyframe] = []
        self.lm_ids = np.zeros(0, np.int64)     # sorted
        self.lm_X = np.zeros((0, 3))
        self.lm_p = np.zeros(0)                 # dynamic probability of each landmark
        self._kf_landmarks_seen = 0
        self._frames_since_kf = 0

    @property
    def n_landmarks(self) -> int:
        return int(self.lm_ids.size)

    def landmarks(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, world points) of the current map."""
        return self.lm_ids.copy(), self.lm_X.copy()

    # ------------------------------------------------------------------ per frame, phase 1
    def estimate_pose(self, stamp_ns: int, ids: np.ndarray, xn: np.ndarray, p_prior: np.ndarray,
                      focal_px: float) -> PoseEstimate:
        """Estimate the current pose (or initialise) from tracks ``ids`` at normalized ``xn``.

        ``p_prior``: each track's dynamic probability from earlier frames (graph prior).
        A returned pose, its covariance and velocity are final: :meth:`update_map` returns them
        unchanged.
        """
        est = self._estimate_pose(stamp_ns, ids, xn, p_prior, focal_px)
        pend = self._pending
        if pend is not None and ("rot" in pend or "T_cw" in pend):
            T_wc = pend["rot"]["T_wc"] if "rot" in pend else geo.invert(pend["T_cw"])
            cov = pend["rot"]["cov"] if "rot" in pend else self._covariance(T_wc)
            pend["out"] = (T_wc, cov, self._velocity((pend["stamp"], T_wc)))
            est.T_world_cam, est.covariance, est.velocity_world = pend["out"]
        return est

    def _estimate_pose(self, stamp_ns, ids, xn, p_prior, focal_px) -> PoseEstimate:
        if not self.async_mapping:
            self.finish_keyframe()    # normally done already, after the previous pose went out
        ids = np.asarray(ids, np.int64)
        xn = np.asarray(xn, np.float64)
        p_prior = np.asarray(p_prior, np.float64)
        if self.cfg.window_static_world:
            p_prior = np.zeros_like(p_prior)
        self._f = float(focal_px)
        self._stamp = int(stamp_ns)
        n = ids.shape[0]
        nan = np.full((n, 2), np.nan)
        self._pending = dict(stamp=stamp_ns, ids=ids, xn=xn, is_init=False, reset=False)
        if self.state == TrackingState.TRACKING:
            est = self._track(stamp_ns, ids, xn, p_prior)
            news, self._init_news = self._init_news, None
            if est is not None:
                if news is not None:
                    msg, was_lost, init_stamp = news
                    est.message = (f"{msg}, by the map stage from the frame "
                                   f"{(stamp_ns - init_stamp) * 1e-6:.0f} ms before this one")
                    est.reset = was_lost
                    # The first frame on the new map stands for its initialisation, as the
                    # initialisation frame does inline: a keyframe for the dense stage (voxel
                    # map, joint refinement of the initial window).
                    self._pending.update(message=est.message, reset=was_lost, is_init=True)
                return est
            # Lost: keep the last good frame as the reference of the next initialisation.
            self.state = TrackingState.LOST
            self._clear_map()
            self._ref = dict(self._last_good) if self._last_good is not None else None
            lost = "tracking lost: too few pose inliers; re-initialising"
            if self._ref is None or not self.cfg.window_rotation_only:
                self._pending = None
                return PoseEstimate(TrackingState.LOST, None, nan, np.zeros(n, bool), np.zeros(n, bool),
                                    message=lost)
            # The last good frame may still explain this one by a rotation (e.g. a sudden turn).
            est = self._initialise(stamp_ns, ids, xn, p_prior)
            est.message = lost + ("; " + est.message if est.message else "")
            return est
        return self._initialise(stamp_ns, ids, xn, p_prior)

    # ------------------------------------------------------------------ per frame, phase 2
    def update_map(self, p_dynamic: np.ndarray) -> WindowResult:
        """Keyframe decision, triangulation, bundle adjustment and culling for the frame given to
        the last :meth:`estimate_pose`, with each track's dynamic probability ``p_dynamic``."""
        res = self._update_map(p_dynamic)
        res.init_pending = self.init_pending
        return res

    def _update_map(self, p_dynamic: np.ndarray) -> WindowResult:
        pend, self._pending = self._pending, None
        if pend is not None and "rot" in pend:
            # Rotation-only pose (before initialisation): no map to update.
            T_wc, cov, vel = pend["out"]
            self._history.append((pend["stamp"], T_wc))
            return WindowResult(TrackingState.TRACKING, T_wc, cov, vel, False,
                                np.full(pend["ids"].shape[0], np.nan), pend["rot"]["message"])
        if pend is None or self.state != TrackingState.TRACKING:
            n = 0 if pend is None else pend["ids"].shape[0]
            return WindowResult(self.state, None, None, None, False, np.full(n, np.nan))
        ids, xn = pend["ids"], pend["xn"]
        p_dynamic = np.asarray(p_dynamic, np.float64)
        if self.cfg.window_static_world:
            p_dynamic = np.zeros_like(p_dynamic)
        # Landmarks take the current probability of their track.
        k, hit = lookup(self.lm_ids, ids)
        self.lm_p[k[hit]] = p_dynamic[hit]
        is_kf = pend["is_init"]
        T_cw = pend["T_cw"]              # at initialisation, the new keyframe's pose
        self.keyframe_blocked = False
        if not self.map_busy:
            self.keyframe_blocked_since_ns = None
        if not is_kf and self._need_keyframe(ids, xn, hit):
            if self.map_busy:
                # The previous keyframe is not in the window yet: a new one now would be
                # measured against the wrong keyframe. The caller should let the map catch up
                # (Pipeline.estimate waits for it) instead of tracking on an ever older map.
                self.keyframe_blocked = True
                if self.keyframe_blocked_since_ns is None:
                    self.keyframe_blocked_since_ns = pend["stamp"]
            else:
                # Triangulation and bundle adjustment wait for finish_keyframe() (or a MapJob on
                # another thread), so that the caller can publish this frame's pose first;
                # later frames see their result.
                self._deferred_kf = (pend["stamp"], ids, xn, pend["T_cw"], p_dynamic)
                self._frames_since_kf = 0
                is_kf = True
        T_wc, cov, vel = pend["out"]
        depth = self._remember_tracked(pend["stamp"], ids, xn, T_cw, T_wc)
        return WindowResult(TrackingState.TRACKING, T_wc, cov, vel, is_kf, depth,
                            pend.get("message", ""), pend["reset"])

    def far_bounds(self, ids: np.ndarray, xn: np.ndarray, T_world_cam: np.ndarray | None,
                   allowance_px: float, structure: np.ndarray | None = None,
                   min_texture_share: float = 0.0) -> np.ndarray:
        """(N,) upper bound on the inverse depth in the camera ``T_world_cam`` of each track that
        has no landmark, from its parallax against the oldest window keyframe that saw it; NaN
        where there is none (a landmark, not seen in a keyframe, too little baseline across the
        ray).

        Why: a static track stays untriangulated while its parallax is below
        ``window_tri_min_parallax_deg``, and small parallax over a known baseline means *far*.
        For the point X = C2 + r d2 on the current ray d2, the rays from the keyframe centre C1
        and from C2 meet at the angle a with sin a = |B x d2| / |X - C1| exactly (B = C2 - C1),
        and |X - C1| <= r + |B|. The measured angle plus ``allowance_px`` / focal (track noise in
        both views, pose error) bounds a from above, so r >= |B x d2| / sin(angle + allowance)
        - |B|, i.e. 1/z = |(x, 1)| / r is bounded from above. Only this one-sided bound is used:
        the opposite one (from angle - allowance) is broken by tracks with spurious extra motion
        (drift, occlusion T-junctions), measured to hurt low_texture and multi_object. Only the
        baseline the window already knows enters: a camera that has not translated gives none.

        ``structure`` (N, 3): the image structure tensor [Sxx, Sxy, Syy] around each track. A
        track measures its motion only along the image gradient (aperture problem): on an edge
        that runs along the epipolar line it slides freely, and its parallax, which lies along
        that line, reads as small. Tracks whose gradient energy along the epipolar direction is
        below ``min_texture_share`` of their total get no bound.
        """
        ids = np.asarray(ids)
        out = np.full(ids.shape[0], np.nan)
        if T_world_cam is None or not self.keyframes or ids.size == 0 or getattr(self, "_f", 0) <= 0:
            return out
        _, is_lm = lookup(self.lm_ids, ids)
        todo = ~is_lm
        C2 = T_world_cam[:3, 3]
        b2 = geo.bearings(xn) @ T_world_cam[:3, :3].T          # unit world bearings
        norm_xn = np.sqrt(1.0 + np.sum(np.asarray(xn, np.float64) ** 2, axis=1))
        allow = float(allowance_px) / self._f
        for kf in self.keyframes:                  # oldest first: the widest baseline
            if not todo.any():
                break
            kk, seen = lookup(kf.ids, ids)
            sel = np.flatnonzero(todo & seen)
            if sel.size == 0:
                continue
            T_wc1 = geo.invert(kf.T_cw)
            b1 = geo.bearings(kf.xn[kk[sel]]) @ T_wc1[:3, :3].T
            d2 = b2[sel]
            angle = np.arctan2(np.linalg.norm(np.cross(b1, d2), axis=1), np.sum(b1 * d2, axis=1))
            B = C2 - T_wc1[:3, 3]
            b_perp = np.linalg.norm(np.cross(B[None, :], d2), axis=1)
            r_min = b_perp / np.sin(np.minimum(angle + allow, 0.5 * np.pi)) - np.linalg.norm(B)
            ok = r_min > 0
            if structure is not None:
                # Epipolar direction at x2: a point on the ray seen from C1 (in this camera's
                # orientation, t = C1 - C2 in camera coordinates) projects to about
                # x2 - (t_xy - t_z x2) / z.
                t = T_world_cam[:3, :3].T @ (-B)
                x2 = np.asarray(xn, np.float64)[sel]
                ed = t[None, :2] - t[2] * x2
                S = np.asarray(structure, np.float64)[sel]
                along = S[:, 0] * ed[:, 0] ** 2 + 2 * S[:, 1] * ed[:, 0] * ed[:, 1] + S[:, 2] * ed[:, 1] ** 2
                total = (S[:, 0] + S[:, 2]) * np.sum(ed ** 2, axis=1)
                ok &= along >= min_texture_share * np.maximum(total, 1e-30)
            out[sel[ok]] = norm_xn[sel[ok]] / r_min[ok]
            todo[sel[ok]] = False
        return out

    # ------------------------------------------------------------------ initialisation
    def _initialise(self, stamp_ns, ids, xn, p_prior) -> PoseEstimate:
        self._evidence = self._motion_evidence(ids, xn, p_prior)
        o = np.argsort(ids)
        self._recent.append((ids[o], xn[o]))
        est = self._initialise_from_ref(stamp_ns, ids, xn, p_prior)
        self._graph_informed |= len(self._recent) >= 2
        return est

    def _awaiting_evidence(self) -> bool:
        """The first frame after the first reference, with motion evidence: the graph has not
        flagged any moving track yet (see reset()) but will have by the next frame, so neither
        the map nor a provisional pose comes from this frame pair. Without evidence (the camera
        translates too much for the rotation model) waiting would tell nothing new."""
        return not self._graph_informed and self._evidence is not None

    def _motion_evidence(self, ids, xn, p_prior) -> np.ndarray | None:
        """Residual (N, 2) pixels of each track against the dominant pure rotation over the last
        ``window_motion_span_frames`` frames, or None when no rotation explains most tracks.

        Before a map exists, this is the evidence that lets the graph find moving objects: over
        a few frames a slow camera's background follows a rotation to within its small parallax,
        while a moving object's tracks do not. The rotation is the one whose inliers cover most
        of the image (a compact object, however large its share of the tracks, covers less).
        """
        c = self.cfg
        if not self._recent:
            return None
        old_ids, old_xn = self._recent[0]
        k, hit = lookup(old_ids, ids)
        usable = hit & (p_prior < c.window_dynamic_threshold)
        if usable.sum() < c.window_min_inliers:
            return None
        x1, x2 = old_xn[k[usable]], xn[usable]
        cell = c.window_coverage_cell_px / self._f
        R, inl, _ = fit_rotation(x1, x2, self._f, c.window_rotation_inlier_px, cell,
                                 c.window_rotation_hypotheses, self._rng)
        cells = coverage_cells(x2, cell)
        # The rotation must hold over most of the image (not most of the tracks: a large object
        # may own half of them); else the camera translates too much for clean evidence.
        if inl.sum() < c.window_min_inliers or (
                coverage(inl[None], cells)[0] < 0.5 * coverage(np.ones((1, inl.size), bool), cells)[0]):
            return None
        res = np.full((ids.shape[0], 2), np.nan)
        r = geo.rotation_residual(R, old_xn[k[hit]], xn[hit]) * self._f
        r[~np.isfinite(r)] = 1e3
        res[hit] = r
        return res

    def _initialise_from_ref(self, stamp_ns, ids, xn, p_prior) -> PoseEstimate:
        c = self.cfg
        n = ids.shape[0]
        if self._ref is None:
            self._ref = dict(ids=ids, xn=xn, T_wc=np.eye(4), depth_target=1.0, stamp=stamp_ns)
            # The reference is the world origin: its pose is known (rotation-only output).
            rot = self._rotation_pose(self._ref, ids, xn, np.ones(n, bool), p_prior, identity=True)
            return self._not_initialised("reference frame set", rot, n)
        ref = self._ref
        k, hit = lookup(np.sort(ref["ids"]), ids)
        order = np.argsort(ref["ids"])
        ref_xn = ref["xn"][order]
        usable = hit & (p_prior < c.window_dynamic_threshold)
        rot = self._rotation_pose(ref, ids, xn, hit, p_prior, k=k, ref_xn=ref_xn)
        if hit.sum() < c.window_init_min_points or (
                rot is not None and hit.sum() < 2 * c.window_init_min_points):
            # The reference is fading out of view: restart from this frame. Its pose is the
            # rotation-only one when that holds; else, before the first initialisation, the world
            # is simply re-anchored here (identity); after a loss this frame's pose is unknown and
            # is extrapolated from the last tracked motion (constant velocity), a guess that the
            # next map's poses will be chained from.
            T_wc = np.eye(4)
            if rot is not None:
                T_wc = rot["T_wc"]
            elif self.state == TrackingState.LOST and self._history:
                T_wc = geo.invert(self._predict(stamp_ns))
            # Provisional two-view poses need a reference whose pose continues the published
            # ones (``anchored``): not one re-anchored at the identity or extrapolated.
            self._ref = dict(ids=ids, xn=xn, T_wc=T_wc, depth_target=ref["depth_target"], stamp=stamp_ns,
                             anchored=rot is not None and ref.get("anchored", True))
            return self._not_initialised("reference frame renewed", rot, n)
        x1 = ref_xn[k[usable]]
        x2 = xn[usable]
        if x1.shape[0] < c.window_init_min_points:
            return self._not_initialised("waiting for parallax", rot, n)
        # Without a rotation-only pose, the two-view geometry is worked out even on a short
        # baseline: it may give this frame a provisional pose.
        # (Not with init_async: the two-view geometry is then worked out in the map stage.)
        provisional = rot is None and c.window_provisional_poses and not self.init_async
        # The map itself waits until the image motion is large too: initialising on the first
        # baseline that the two-view tests accept gave less accurate trajectories on the
        # synthetic presets (the first keyframes stay fixed in the bundle adjustment), and the
        # frames in between have provisional poses.
        flow = float(np.median(np.linalg.norm(x2 - x1, axis=1)))
        if flow < np.tan(np.radians(c.window_init_min_parallax_deg)) and not provisional:
            return self._not_initialised("waiting for parallax", rot, n)
        if self._awaiting_evidence():
            # Neither a map nor a provisional pose from this frame pair (see reset()); no need to
            # work out its geometry.
            return self._not_initialised("waiting for the moving-object evidence of one frame", rot, n)
        if self.init_async:
            # The two-view analysis (tens to hundreds of milliseconds) goes to the map stage; this
            # frame keeps its rotation-only pose, if any. A frame arriving before the stage took
            # the job replaces it: the newest frame has the most parallax.
            last = f" (last analysis: {self._init_why})" if self._init_why else ""
            if self._map_job_open:
                return self._not_initialised("two-view geometry being analysed" + last, rot, n)
            self._deferred_init = (ref, stamp_ns, ids, xn, p_prior, usable, x1, x2)
            return self._not_initialised("two-view geometry handed to the map stage" + last, rot, n)
        why, tv, T_cw = self._build_initial_map(ref, stamp_ns, ids, xn, p_prior, usable, x1, x2,
                                                early_exit=not provisional)
        if why is not None:
            if provisional and tv is not None:
                rot = self._provisional_pose(ref, tv, x1, x2, usable, n)
            return self._not_initialised(why, rot, n)
        was_lost = self._start_tracking(ref)
        msg = self._init_message(was_lost)
        self._info, self._sigma2 = self._pose_information(T_cw, ids, xn)
        residual, has_lm = self._residuals(ids, xn, T_cw)
        self._pending.update(T_cw=T_cw, is_init=True, reset=was_lost, message=msg)
        inliers = has_lm & (np.linalg.norm(residual, axis=1) < c.window_inlier_px)
        return PoseEstimate(TrackingState.TRACKING, geo.invert(T_cw), residual, has_lm, inliers,
                            message=msg, reset=was_lost)

    def _build_initial_map(self, ref, stamp_ns, ids, xn, p_prior, usable, x1, x2, early_exit=True):
        """Two-view geometry of the frame (``x2``) w.r.t. the reference (``x1``, the ``usable``
        tracks) and, when it is good enough, the initial map (reference and frame as keyframes,
        their points triangulated and bundle-adjusted, at the reference's scale), replacing this
        estimator's map. Returns (why, tv, T_cw): ``why`` None and the frame's T_cam_world on
        success, else why not (``tv`` as :meth:`_relative_pose`). Reads the configuration and
        the focal length only, so that it can run on a copy (:class:`InitJob`)."""
        c = self.cfg
        why, tv = self._relative_pose(x1, x2, early_exit=early_exit)
        flow = float(np.median(np.linalg.norm(x2 - x1, axis=1)))
        if why is None and flow < np.tan(np.radians(c.window_init_min_parallax_deg)):
            why = "waiting for parallax"
        if why is not None:
            return why, tv, None
        R, t, inl = tv["R"], tv["t"], tv["inl"]
        T21 = geo.make_T(R, t)
        X1 = geo.triangulate(np.eye(4)[:3], T21[:3], x1, x2)
        good = inl & np.all(np.isfinite(X1), axis=1)
        X1s = np.where(np.isfinite(X1), X1, 0.0)
        z1 = X1s[:, 2]
        z2 = geo.transform(T21, X1s)[:, 2]
        e1 = np.linalg.norm(geo.reprojection_error(np.eye(4), X1s, x1), axis=1) * self._f
        e2 = np.linalg.norm(geo.reprojection_error(T21, X1s, x2), axis=1) * self._f
        par = geo.parallax_deg(np.zeros(3), geo.invert(T21)[:3, 3], X1s)
        good &= (z1 > 0) & (z2 > 0) & (e1 < c.window_inlier_px) & (e2 < c.window_inlier_px)
        good &= par > c.window_tri_min_parallax_deg
        if good.sum() < c.window_init_min_points:
            return f"only {int(good.sum())} good points", tv, None
        if float(np.median(geo.ray_angle_deg(R, x1[inl], x2[inl]))) < c.window_init_min_parallax_deg:
            return "waiting for parallax", tv, None
        # Scale convention: median landmark depth in the reference camera = depth_target.
        # The median runs over every inlier in front of both cameras, not only the well-
        # triangulated ones kept as landmarks: those are biased towards near points on a short
        # baseline, and the scale would jump at each re-initialisation.
        broad = inl & np.all(np.isfinite(X1), axis=1) & (z1 > 0) & (z2 > 0)
        s = ref["depth_target"] / np.median(z1[broad] if broad.sum() >= c.window_init_min_points else z1[good])
        T21[:3, 3] *= s
        X1 = X1s * s
        T_w_ref = ref["T_wc"]
        T_ref_w = geo.invert(T_w_ref)
        self._clear_map()
        uid = ids[usable][good]
        o = np.argsort(uid)
        self.lm_ids = uid[o]
        self.lm_X = geo.transform(T_w_ref, X1[good])[o]
        self.lm_p = np.zeros(self.lm_ids.size)
        ro = np.argsort(ref["ids"])
        self.keyframes = [Keyframe(ref["stamp"], T_ref_w, ref["ids"][ro], ref["xn"][ro])]
        z_before = float(np.median(geo.transform(T_ref_w, self.lm_X)[:, 2]))
        self._add_keyframe(stamp_ns, ids, xn, T21 @ T_ref_w, p_prior, triangulate=False)
        self._rescale(T_w_ref, ref, z_before)
        return None, tv, self.keyframes[-1].T_cw

    def initial_map(self, ref, stamp_ns, ids, xn, p_prior, usable, x1, x2):
        """What an :class:`InitJob` runs: :meth:`_build_initial_map` on this estimator (a copy),
        then the pose information at the frame's pose. Returns (why, outcome)."""
        why, _, T_cw = self._build_initial_map(ref, stamp_ns, ids, xn, p_prior, usable, x1, x2)
        if why is not None:
            return why, None
        return None, (T_cw, *self._pose_information(T_cw, ids, xn))

    def _start_tracking(self, ref) -> bool:
        """State change once the initial map is in place; returns whether it ends a loss."""
        was_lost = self.state == TrackingState.LOST
        self.state = TrackingState.TRACKING
        self._ref = None
        self._recent.clear()              # initialised: the map's residuals take over
        # Motion model restarts from the two initial views.
        self._history.clear()
        self._history.append((ref["stamp"], ref["T_wc"]))
        return was_lost

    def _init_message(self, was_lost: bool) -> str:
        return (f"re-initialised ({self.lm_ids.size} landmarks); scale may differ from before the loss"
                if was_lost else f"initialised ({self.lm_ids.size} landmarks)")

    def _pose_information(self, T_cw, ids, xn) -> tuple[np.ndarray, float]:
        """Pose information and residual variance at the initial pose (for the covariance), as
        in tracking."""
        c = self.cfg
        k, hit = lookup(self.lm_ids, ids)
        _, info = refine_pose(T_cw, self.lm_X[k[hit]], xn[hit], np.ones(int(hit.sum())),
                              self._f, c.window_huber_px, 1)
        e = np.linalg.norm(geo.reprojection_error(T_cw, self.lm_X[k[hit]], xn[hit]), axis=1) * self._f
        e = e[e < c.window_inlier_px]
        return info, max(float(np.sum(e ** 2) / max(2 * e.size - 6, 1)), 0.05)

    def _not_initialised(self, why: str, rot: dict | None, n: int) -> PoseEstimate:
        """Estimate of a frame that did not initialise: the rotation-only or provisional
        two-view pose if there is one, else no pose."""
        if rot is None:
            evidence = self._evidence if self._evidence is not None else np.full((n, 2), np.nan)
            return PoseEstimate(self.state, None, evidence, np.zeros(n, bool), np.zeros(n, bool),
                                message="initialising: " + why)
        if rot.get("two_view"):
            rot["message"] = f"two-view pose (no map yet) while initialising: {why}"
        else:
            rot["message"] = f"rotation-only tracking (translation held) while initialising: {why}"
        self._pending["rot"] = rot
        return PoseEstimate(TrackingState.TRACKING, rot["T_wc"], rot["residual"], np.zeros(n, bool),
                            rot["inliers"], message=rot["message"])

    def _rotation_pose(self, ref, ids, xn, hit, p_prior, k=None, ref_xn=None, identity=False):
        """Rotation-only pose of the current frame w.r.t. the initialisation reference, or None.

        While the camera barely translates, the tracks shared with the reference follow a pure
        rotation (homography R in normalized coordinates) up to their parallax; if enough of the
        usable tracks do (``window_rotation_min_inlier_ratio``), the pose is the reference's with
        that rotation and the reference's position, and each track's residual against the model
        is returned for the dynamic graph. ``identity``: the current frame is the reference.
        """
        c = self.cfg
        if not c.window_rotation_only:
            return None
        n = ids.shape[0]
        f = self._f
        if self.state == TrackingState.LOST and len(self._history) >= 2:
            # After a loss the camera's recent speed is known: if it moved more since the
            # reference than a rotation-only pose may ignore, a rotation that absorbs the
            # translation (they look alike on a narrow view) must not be taken for one.
            (t0, T0), (t1, T1) = self._history[-2], self._history[-1]
            if t1 > t0:
                speed = np.linalg.norm(T1[:3, 3] - T0[:3, 3]) / (t1 - t0)
                moved = speed * max(self._stamp - ref["stamp"], 0)
                if moved > c.window_rotation_max_parallax_px / f * ref["depth_target"]:
                    return None
        residual = np.full((n, 2), np.nan)
        if identity:
            R = np.eye(3)
            inl = np.ones(n, bool)
            residual[:] = 0.0
            e_in = np.zeros(0)
            b_in = geo.bearings(xn)
        else:
            usable = hit & (p_prior < c.window_dynamic_threshold)
            if usable.sum() < c.window_min_inliers:
                return None
            x1_all = ref_xn[k[hit]]
            x1, x2 = ref_xn[k[usable]], xn[usable]
            R, inl_u, err = fit_rotation(x1, x2, f, c.window_rotation_inlier_px,
                                         c.window_coverage_cell_px / f, c.window_rotation_hypotheses,
                                         self._rng, ref.get("R_prev"))
            if (inl_u.sum() < max(c.window_min_inliers, c.window_rotation_min_inlier_ratio * usable.sum())
                    or np.median(err) > c.window_rotation_max_parallax_px):
                return None
            residual[hit] = geo.rotation_residual(R, x1_all, xn[hit]) * f
            residual[~np.isfinite(residual).all(axis=1) & hit] = 1e3
            inl = np.zeros(n, bool)
            inl[np.flatnonzero(usable)[inl_u]] = True
            e_in = err[inl_u]
            b_in = geo.bearings(x1[inl_u]) @ R.T
            ref["R_prev"] = R
        if self._evidence is not None:
            # The multi-frame evidence is the sharper test of independent motion; the residual
            # against the reference mixes in the parallax accumulated since the reference.
            residual = np.where(np.isfinite(self._evidence), self._evidence, residual)
        # T_cur_ref = (R, 0): the current camera sits at the reference's position.
        T_wc = ref["T_wc"] @ geo.make_T(R.T, np.zeros(3))
        # Covariance: rotation from the model's Gauss-Newton information and the inlier residual
        # variance (camera frame, then world); position: the held translation's large prior.
        _, Jp = _proj_jacobians(b_in / b_in[:, 2:3], f)
        Jr = Jp[:, :, 3:]
        H = np.einsum("nai,naj->ij", Jr, Jr) + np.eye(3) * 1e-9
        sigma2 = max(float(np.mean(e_in ** 2)) if e_in.size else 0.0, 0.05)
        R_wc = T_wc[:3, :3]
        cov = np.zeros((6, 6))
        std = c.window_rotation_translation_std * ref["depth_target"]
        cov[:3, :3] = np.eye(3) * std * std
        cov[3:, 3:] = R_wc @ (np.linalg.inv(H) * sigma2) @ R_wc.T
        return dict(T_wc=T_wc, cov=0.5 * (cov + cov.T), residual=residual, inliers=inl)

    def _essential_candidates(self, x1, x2, use, early_exit=True):
        """Robust relative-pose estimates fitted on the correspondences ``use``, each polished
        on its inliers and scored (truncated MSAC cost over ``use``), best first; inliers are
        evaluated on all correspondences. A string when the fitted set has too little parallax
        (only with ``early_exit``); else (candidates, the score's truncation threshold in
        normalized units)."""
        c = self.cfg
        tau = c.window_init_inlier_px / self._f
        a, b = x1[use], x2[use]
        cands = []
        # A loose RANSAC threshold lets a few bad tracks pick the wrong minimum: stay at <= tau.
        for method, th in ((cv2.RANSAC, tau * 0.5), (cv2.RANSAC, tau), (cv2.LMEDS, tau)):
            E, mask = cv2.findEssentialMat(a, b, np.eye(3), method, 0.999, th)
            if E is None or E.shape[0] < 3:
                continue
            _, R, t, _ = cv2.recoverPose(E[:3], a, b, np.eye(3), mask=mask.copy())
            inl = (np.abs(sampson_residuals(R, t.ravel(), x1, x2)) < tau) & use
            if inl.sum() < c.window_init_min_points:
                continue
            if (early_exit and not cands
                    and np.median(geo.ray_angle_deg(R, a, b)) < c.window_init_min_parallax_deg):
                # Cheap early exit: too little rotation-free motion. The median is over all
                # fitted correspondences, not only the model's inliers, so that points which
                # barely move (and fit any model) count against initialising.
                return "waiting for parallax"
            R, t, H = refine_relative_pose(R, t.ravel(), x1[inl], x2[inl], 0.5 * tau)
            r = np.abs(sampson_residuals(R, t, x1, x2))
            inl = r < tau
            s2 = float(np.mean(r[inl] ** 2))
            H0, s20 = H, s2           # every inlier alike: the map's (conservative) gates use these
            if c.window_init_track_weighting and inl.sum() >= c.window_init_min_points:
                # Tracks are not equally good: on faint texture a share of them (corners on
                # occlusion edges, slowly drifting KLT windows) sits at 0.5-1 px from any
                # epipolar geometry while the rest fits to ~0.1 px. Weighting every inlier
                # alike lets the bad share bend the solution and set the noise level, which
                # inflates the covariance and the depth uncertainty that gate initialisation.
                # Cauchy weights at the inliers' own noise level (robust sigma) let the
                # consistent tracks carry the solution and its uncertainty.
                sig = max(1.4826 * float(np.median(r[inl])), 0.02 / self._f)
                R, t, H = refine_relative_pose(R, t, x1[inl], x2[inl], sig, loss="cauchy")
                r = np.abs(sampson_residuals(R, t, x1, x2))
                inl = r < tau
                w = robust_weights(r[inl], sig, "cauchy")
                s2 = float(np.sum(w * r[inl] ** 2) / max(float(np.sum(w)), 1e-12))
            # The epipolar residual does not see the sign of t; recoverPose chose it by
            # cheirality on the unpolished model, which on a short baseline (most points near
            # infinity) can go either way. Choose it again on the polished one.
            if _in_front_count(R, -t, x1[inl], x2[inl]) > _in_front_count(R, t, x1[inl], x2[inl]):
                t = -t
            cands.append((R, t, inl, H, s2, r, H0, s20))
        if not cands:
            return [], tau
        # Score truncation: the inlier threshold (a bound on the tracks' error that a model must
        # meet) is several times the noise of good tracks. Truncating the score there lets a
        # wrong short-baseline model that fits a few more outliers (e.g. the edge of a moving
        # object) beat the right one, although it fits every static track worse. Truncating at
        # a few sigma of the best-fitting candidate's inlier noise weighs those properly.
        sigma = min(1.4826 * float(np.median(r[inl & use])) for _, _, inl, _, _, r, *_ in cands)
        tau_s = float(np.clip(c.window_init_score_sigmas * sigma, 0.1 * tau, tau))
        if c.window_init_common_polish:
            cands = [self._common_polish(cand, x1, x2, use, tau, tau_s) for cand in cands]
        scored = [(float(np.sum(np.minimum(r[use], tau_s) ** 2)), R, t, inl, H, s2, H0, s20)
                  for R, t, inl, H, s2, r, H0, s20 in cands]
        scored.sort(key=lambda k: k[0])
        return scored, tau_s

    def _common_polish(self, cand, x1, x2, use, tau, tau_s):
        """A candidate of :meth:`_essential_candidates` polished on every correspondence ``use``
        with a Cauchy loss at the scoring scale ``tau_s`` (see window_init_common_polish); kept
        as it was unless its truncated score improves. The information and noise level that
        gate the map and the provisional poses are taken again at the new solution, as the
        candidate's own polish takes them (every inlier alike; and with track weighting)."""
        c = self.cfg
        R, t, inl, H, s2, r, H0, s20 = cand
        R2, t2, _ = refine_relative_pose(R, t, x1[use], x2[use], tau_s, loss="cauchy")
        r2 = np.abs(sampson_residuals(R2, t2, x1, x2))
        inl2 = r2 < tau
        if (inl2.sum() < c.window_init_min_points
                or np.sum(np.minimum(r2[use], tau_s) ** 2) >= np.sum(np.minimum(r[use], tau_s) ** 2)):
            return cand
        if _in_front_count(R2, -t2, x1[inl2], x2[inl2]) > _in_front_count(R2, t2, x1[inl2], x2[inl2]):
            t2 = -t2
        H0 = relative_pose_information(R2, t2, x1[inl2], x2[inl2], 0.5 * tau, "huber")
        s20 = float(np.mean(r2[inl2] ** 2))
        H, s2 = H0, s20
        if c.window_init_track_weighting:
            sig = max(1.4826 * float(np.median(r2[inl2])), 0.02 / self._f)
            H = relative_pose_information(R2, t2, x1[inl2], x2[inl2], sig, "cauchy")
            w = robust_weights(r2[inl2], sig, "cauchy")
            s2 = float(np.sum(w * r2[inl2] ** 2) / max(float(np.sum(w)), 1e-12))
        return R2, t2, inl2, H, s2, r2, H0, s20

    def _relative_pose(self, x1, x2, early_exit=True):
        """Two-view geometry of view 2 w.r.t. view 1: (why, tv). ``why`` is None when the
        geometry is good enough to initialise, else a string saying why not yet; ``tv`` is
        dict(R, t (unit), inl, cov (5x5 over rotation and translation direction), cands (all
        solutions, best first)) or None when there is no solution at all.

        On a short baseline the essential matrix has near-equivalent solutions (translation
        direction off by ~10 degrees traded against rotation), and which one a RANSAC run returns
        depends on a few bad tracks. So several robust estimates are each polished on all their
        inliers and scored with one truncated (MSAC) cost; if the best two disagree while
        scoring alike, the geometry is ambiguous and initialisation waits for more parallax.

        Tracks flagged dynamic before initialisation (see :meth:`_motion_evidence`) are not
        passed in: with a large moving object close to a slow camera, the object's coherent,
        large motion otherwise defines the model and the barely moving background fits it too
        (a small displacement lies on almost any epipolar line).
        """
        c = self.cfg
        use = np.ones(x1.shape[0], bool)
        cands = self._essential_candidates(x1, x2, use, early_exit)
        if isinstance(cands, str):
            return cands, None
        cands, tau_s = cands
        if not cands:
            return "no essential matrix", None
        score, R, t, inl, H, sigma2, H0, sigma2_0 = cands[0]
        tv = dict(R=R, t=t, inl=inl, cov=None, cands=cands, tau_s=tau_s)
        # Is the initial map worth building? Propagate the relative pose's covariance (from the
        # refinement's information matrix and the residual variance: a flat valley, rotation
        # traded against translation, means a too short baseline) and the image noise into the
        # depths of the points; few tracks or a short baseline both show up as depth uncertainty.
        try:
            cov = np.linalg.inv(H) * sigma2
            tv["cov"] = cov
            # The map's gates (ambiguity, depth uncertainty) take every inlier alike, as the map
            # will: they stay as conservative as without track weighting (an initial map on a
            # baseline that only the consistent tracks find certain measured worse), while the
            # provisional poses use the weighted covariance (``cov``).
            cov = np.linalg.inv(H0) * sigma2_0
        except np.linalg.LinAlgError:
            return "singular two-view geometry, waiting for parallax", tv
        # Two minima scoring alike: ambiguous, unless they differ by less than the uncertainty
        # of the best one (then they are the same solution up to noise).
        t_std = float(np.degrees(np.sqrt(max(cov[3, 3] + cov[4, 4], 0.0))))
        r_std = float(np.degrees(np.sqrt(max(np.trace(cov[:3, :3]), 0.0))))
        for s2, R2, t2, *_ in cands[1:]:
            differ = (np.degrees(np.arccos(np.clip(t @ t2, -1.0, 1.0))) > max(2.0, 3.0 * t_std)
                      or np.degrees(np.linalg.norm(geo.so3_log(R.T @ R2))) > max(0.2, 3.0 * r_std))
            if differ and s2 < 1.1 * score:
                return "ambiguous two-view geometry, waiting for parallax", tv
        rel = init_depth_uncertainty(R, t, cov, np.sqrt(sigma2_0), x1[inl], x2[inl])
        depth_err = float(np.median(rel))
        self._init_depth_error = depth_err
        tv["depth_err"] = depth_err
        if not depth_err <= c.window_init_max_depth_error:
            return (f"initial depths uncertain ({100 * depth_err:.0f}% median, translation direction "
                    f"+-{t_std:.1f} deg), waiting for parallax"), tv
        _, maskH = cv2.findHomography(x1, x2, cv2.RANSAC, c.window_init_inlier_px / self._f)
        nH = int(maskH.sum()) if maskH is not None else 0
        if nH >= c.window_init_homography_ratio * inl.sum():
            return "homography explains the motion (rotation or plane)", tv
        return None, tv

    def _two_view_scale(self, ref, R, t, x1, x2, ids_u=None):
        """Scale of the unit translation t (view 2 w.r.t. the reference) that the map built from
        this geometry would get, and the triangulated depths (in the reference) it rests on.

        As at initialisation: the median depth of the points in front of both views is the
        reference's depth target, unless (after a loss) the reference carries the old map's
        depth of its tracks: then the median ratio of old to new depth (see :meth:`_rescale`)."""
        T21 = geo.make_T(R, t)
        X = geo.triangulate(np.eye(4)[:3], T21[:3], x1, x2)
        fin = np.all(np.isfinite(X), axis=1)
        Xs = np.where(fin[:, None], X, 0.0)
        front = fin & (Xs[:, 2] > 0) & (geo.transform(T21, Xs)[:, 2] > 0)
        if front.sum() < self.cfg.window_init_min_points:
            return None, front, Xs[:, 2]
        z = Xs[:, 2]
        s = ref["depth_target"] / np.median(z[front])
        if ref.get("depth") is not None and ids_u is not None:
            k, hit = lookup(np.sort(ref["ids"]), ids_u)
            old = np.asarray(ref["depth"])[np.argsort(ref["ids"])][k]
            both = hit & front & np.isfinite(old) & (old > 0)
            if both.sum() >= self.cfg.window_min_inliers:
                s = float(np.median(old[both] / z[both]))
        return s, front, z

    def _provisional_pose(self, ref, tv, x1, x2, usable, n) -> dict | None:
        """Pose of a frame before (re-)initialisation from its two-view geometry w.r.t. the
        reference, in the world frame and at the scale the map will have, or None when it is
        not determinate enough.

        The position is the scaled two-view baseline, so its error is the baseline's length
        times the relative error of its direction and scale: on the short baselines before
        initialisation it stays small even though the geometry is not yet good enough for a
        map (whose depth errors would bias every later pose). Its uncertainty is taken from
        the two-view covariance (direction; scale through the median depth of the points
        re-triangulated at +-1 sigma along each principal axis) and from the rivals: on a
        short baseline several solutions can fit nearly alike (rotation traded against
        translation, the sign of t) and the best-scoring one may be wrong; all those within
        ``window_init_rival_cost`` outliers' cost must agree with it."""
        c = self.cfg
        cov = tv["cov"]
        if cov is None or not ref.get("anchored", True) or self._awaiting_evidence():
            return None
        cands = tv["cands"]
        R, t, inl = tv["R"], tv["t"], tv["inl"]
        # Few or barely moving tracks (low texture): the covariance of a short baseline then
        # understates the error; the points' depth uncertainty shows it.
        depth_err = float(np.median(init_depth_uncertainty(
            R, t, cov, np.sqrt(cands[0][5]), x1[inl], x2[inl])))
        if not depth_err <= c.window_provisional_max_depth_error:
            return None
        ids_u = self._pending["ids"][usable]
        s, front, z = self._two_view_scale(ref, R, t, x1[inl], x2[inl], ids_u[inl])
        if s is None:
            return None
        C = -R.T @ t * s                  # camera centre in the reference frame
        # Scale: relative change of the median depth under the pose's principal uncertainties.
        lam, V = np.linalg.eigh(0.5 * (cov + cov.T))
        basis = _tangent_basis(t)
        m0 = np.median(z[front])
        scale_var = 0.0
        for j in range(5):
            d = V[:, j] * np.sqrt(max(lam[j], 0.0))
            R2, t2 = _perturb_relative(R, t, d, basis)
            z2 = geo.triangulate(np.eye(4)[:3], geo.make_T(R2, t2)[:3], x1[inl][front], x2[inl][front])[:, 2]
            ok = np.isfinite(z2) & (z2 > 0)
            if ok.sum() < c.window_init_min_points:
                return None
            scale_var += (np.median(z2[ok]) / m0 - 1.0) ** 2
        dir_var = max(cov[3, 3] + cov[4, 4], 0.0)
        pos_std = float(np.linalg.norm(C) * np.sqrt(scale_var + dir_var))
        rot_std = float(np.degrees(np.sqrt(max(np.trace(cov[:3, :3]), 0.0))))
        # Rivals: alternative solutions that fit almost as well.
        tau2 = tv["tau_s"] ** 2
        spread_pos, spread_rot = 0.0, 0.0
        for s2, R2, t2, inl2, *_ in cands[1:]:
            if s2 > cands[0][0] + c.window_init_rival_cost * tau2:
                continue
            sc2, _, _ = self._two_view_scale(ref, R2, t2, x1[inl2], x2[inl2], ids_u[inl2])
            if sc2 is None:         # most points behind a camera: not a valid alternative
                continue
            spread_pos = max(spread_pos, float(np.linalg.norm(-R2.T @ t2 * sc2 - C)))
            spread_rot = max(spread_rot, float(np.degrees(np.linalg.norm(geo.so3_log(R.T @ R2)))))
        pos_unc = max(pos_std, spread_pos)
        if (pos_unc > c.window_provisional_max_position * ref["depth_target"]
                or max(rot_std, spread_rot) > c.window_provisional_max_rotation_deg):
            return None
        T_ref_cur = geo.invert(geo.make_T(R, t * s))
        T_wc = ref["T_wc"] @ T_ref_cur
        # Covariance: isotropic position (world), rotation from the two-view information. The
        # perturbation exp(d) R_cur_ref of the current camera's rotation is -d in its own frame.
        R_wc = T_wc[:3, :3]
        cov6 = np.zeros((6, 6))
        cov6[:3, :3] = np.eye(3) * pos_unc ** 2
        cov6[3:, 3:] = R_wc @ cov[:3, :3] @ R_wc.T
        evidence = self._evidence if self._evidence is not None else np.full((n, 2), np.nan)
        inliers = np.zeros(n, bool)
        inliers[np.flatnonzero(usable)[inl]] = True
        # The dynamic graph gets the same evidence as a frame without pose: the provisional
        # pose changes what is published, not how the map will be initialised.
        return dict(T_wc=T_wc, cov=0.5 * (cov6 + cov6.T), residual=evidence, inliers=inliers,
                    two_view=True)

    def _rescale(self, T_w_ref: np.ndarray, ref: dict, z_before: float) -> None:
        """Scale the map about the reference camera (bundle adjustment with one fixed camera
        leaves scale free) to continue the scale of the reference.

        After a loss the reference is the last tracked frame, with the old map's depth of each of
        its tracks: the scale is the median ratio of old to new depth over the tracks that have
        both (the same points, so the ratio is the scale change itself). Otherwise, or with too
        few shared points, the scale chosen at initialisation is restored: the median landmark
        depth there goes back to ``z_before``, its value before the bundle adjustment."""
        T_ref_w = geo.invert(T_w_ref)
        z = geo.transform(T_ref_w, self.lm_X)[:, 2]
        s = z_before / np.median(z)
        if ref.get("depth") is not None:
            k, hit = lookup(self.lm_ids, np.asarray(ref["ids"]))
            old = np.asarray(ref["depth"])
            both = hit & np.isfinite(old) & (old > 0)
            if both.sum() >= self.cfg.window_min_inliers:
                zz = z[k[both]]
                ok = zz > 0
                if ok.sum() >= self.cfg.window_min_inliers:
                    s = float(np.median(old[both][ok] / zz[ok]))
        self.lm_X = geo.transform(T_w_ref, geo.transform(T_ref_w, self.lm_X) * s)
        for kf in self.keyframes:
            T_c_ref = kf.T_cw @ T_w_ref
            T_c_ref[:3, 3] *= s
            kf.T_cw = T_c_ref @ T_ref_w

    # ------------------------------------------------------------------ tracking
    def _predict(self, stamp_ns: int) -> np.ndarray:
        """Constant-velocity prediction of T_cam_world at ``stamp_ns``.

        The last inter-frame motion (body frame) is extrapolated in proportion to elapsed time,
        so dropped frames and the multi-frame gap after initialisation are handled alike.
        """
        (t_b, T_b) = self._history[-1]
        if len(self._history) >= 2:
            (t_a, T_a) = self._history[-2]
            if t_b > t_a:
                ratio = min((stamp_ns - t_b) / (t_b - t_a), 5.0)
                xi = geo.se3_log(geo.invert(T_a) @ T_b) * ratio
                return geo.invert(T_b @ geo.se3_exp(xi))
        return geo.invert(T_b)

    def _weights(self, p: np.ndarray) -> np.ndarray:
        if not self.cfg.window_dynamic_weighting:
            return np.ones_like(p)
        return np.clip(1.0 - p, 0.0, 1.0)

    def _track(self, stamp_ns, ids, xn, p_prior) -> PoseEstimate | None:
        c = self.cfg
        f = self._f
        k, hit = lookup(self.lm_ids, ids)
        X = self.lm_X[k[hit]]
        x = xn[hit]
        p = np.maximum(p_prior[hit], self.lm_p[k[hit]])
        w = self._weights(p)
        static = p < c.window_dynamic_threshold
        if static.sum() < c.window_min_inliers:
            return None
        T_pred = self._predict(stamp_ns)
        T, H = self._refine(T_pred, X, x, w)
        err = np.linalg.norm(geo.reprojection_error(T, X, x), axis=1) * f
        inl = (err < c.window_inlier_px) & static
        if inl.sum() < max(c.window_min_inliers, 0.6 * static.sum()):
            # The motion model failed (sudden motion or a large moving object): RANSAC PnP on the
            # landmarks not known to be dynamic, then refine on its inliers.
            idx = np.flatnonzero(static)
            ok, rvec, tvec, rin = cv2.solvePnPRansac(
                X[idx], x[idx], np.eye(3), None, iterationsCount=int(c.window_ransac_iterations),
                reprojectionError=c.window_inlier_px / f, confidence=0.999, flags=cv2.SOLVEPNP_EPNP)
            if not ok or rin is None or len(rin) < c.window_min_inliers:
                return None
            T0 = geo.make_T(cv2.Rodrigues(rvec)[0], tvec.ravel())
            sel = idx[rin.ravel()]
            T0, _ = refine_pose(T0, X[sel], x[sel], w[sel], f, c.window_huber_px, c.window_pose_iterations)
            T, H = self._refine(T0, X, x, w)
            err = np.linalg.norm(geo.reprojection_error(T, X, x), axis=1) * f
            inl = (err < c.window_inlier_px) & static
            if inl.sum() < c.window_min_inliers:
                return None
        # Residual variance of the inliers scales the information matrix into a covariance.
        e_in = err[inl]
        self._sigma2 = max(float(np.sum(e_in ** 2) / max(2 * e_in.size - 6, 1)), 0.05)
        self._info = H
        residual, has_lm = self._residuals(ids, xn, T)
        inliers = np.zeros(ids.shape[0], bool)
        inliers[np.flatnonzero(hit)[inl]] = True
        self._pending.update(T_cw=T)
        return PoseEstimate(TrackingState.TRACKING, geo.invert(T), residual, has_lm, inliers)

    def _refine(self, T, X, x, w):
        """Pose-only refinement: Huber first (convex-ish, safe from a rough prediction), then the
        configured loss from there."""
        c = self.cfg
        n = int(c.window_pose_iterations)
        if c.window_robust_loss == "huber":
            return refine_pose(T, X, x, w, self._f, c.window_huber_px, n, "huber")
        T, _ = refine_pose(T, X, x, w, self._f, c.window_huber_px, max(n // 2, 1), "huber")
        return refine_pose(T, X, x, w, self._f, c.window_huber_px, max(n - n // 2, 1), c.window_robust_loss)

    def _residuals(self, ids, xn, T_cw) -> tuple[np.ndarray, np.ndarray]:
        """Per-track residual vector (pixels) against the static world: reprojection error for
        tracks with a landmark, otherwise the offset from the epipolar line of the oldest window
        keyframe that saw the track (the widest baseline: motion along one short epipolar line
        hides little, along the lines of the whole window less).

        Every track gets one, also those the graph already holds dynamic (they have no landmark:
        they are neither triangulated nor kept in the map). Without it a static track flagged
        by mistake had no evidence left that could clear it (NaN: the graph keeps its belief),
        and stayed flagged (multi_object: static regions flagged for tens of frames at a
        residual of 0.2-0.6 px)."""
        f = self._f
        res = np.full((ids.shape[0], 2), np.nan)
        k, hit = lookup(self.lm_ids, ids)
        if hit.any():
            r = geo.reprojection_error(T_cw, self.lm_X[k[hit]], xn[hit]) * f
            r[~np.isfinite(r)] = 1e3          # behind the camera: clearly not static
            res[hit] = r
        todo = ~hit
        for kf in self.keyframes:             # oldest first
            if not todo.any():
                break
            kk, seen = lookup(kf.ids, ids)
            sel = seen & todo
            if not sel.any():
                continue
            T21 = T_cw @ geo.invert(kf.T_cw)
            if np.linalg.norm(T21[:3, 3]) > 1e-9:
                E = geo.essential_from_pose(T21)
                res[sel] = geo.epipolar_offset(E, kf.xn[kk[sel]], xn[sel]) * f
                todo &= ~sel
        return res, hit

    # ------------------------------------------------------------------ keyframes and mapping
    def _need_keyframe(self, ids, xn, tracked_lm) -> bool:
        c = self.cfg
        kf = self.keyframes[-1]
        kk, seen = lookup(kf.ids, ids)
        if seen.sum() == 0:
            return True
        motion = np.median(np.linalg.norm(xn[seen] - kf.xn[kk[seen]], axis=1)) * self._f
        ratio = tracked_lm.sum() / max(self._kf_landmarks_seen, 1)
        self._frames_since_kf += 1
        since = self._frames_since_kf
        if (motion > c.window_kf_parallax_px or ratio < c.window_kf_track_ratio
                or since >= c.window_kf_max_frames
                or (tracked_lm.sum() < 3 * c.window_min_inliers and since >= c.window_kf_few_landmarks_min_frames)):
            return True
        return False

    def finish_keyframe(self) -> bool:
        """Insert the keyframe the last update_map() decided on: triangulation, bundle adjustment,
        culling. Call before the next estimate_pose(); returns whether there was one."""
        job = self.begin_map_job()
        if job is None:
            return False
        job.run()
        self.commit_map_job(job)
        return True

    @property
    def map_busy(self) -> bool:
        """A decided keyframe (or initialisation) has not been committed to the map yet."""
        return self._map_job_open or self._deferred_kf is not None or self.init_pending

    @property
    def init_pending(self) -> bool:
        """A two-view initialisation waits for the map stage (:meth:`begin_map_job`)."""
        return self._deferred_init is not None

    def begin_map_job(self) -> "MapJob | InitJob | None":
        """Take the pending keyframe into a :class:`MapJob` working on a copy of the map, so
        that triangulation and bundle adjustment can run on another thread while this estimator
        keeps tracking on the current map; or the pending two-view initialisation into an
        :class:`InitJob`. None when neither is pending."""
        if self._deferred_init is not None:
            args, self._deferred_init = self._deferred_init, None
            self._map_job_open = True
            return InitJob(self, args)
        if self._deferred_kf is None:
            return None
        args, self._deferred_kf = self._deferred_kf, None
        self._map_job_open = True
        return MapJob(self, args)

    def abandon_map_job(self, job: "MapJob") -> None:
        """Forget a MapJob that failed: the map stays as it was before it began."""
        self._map_job_open = False

    def commit_map_job(self, job: "MapJob") -> bool:
        """Install the map a :class:`MapJob` refined. Tracks' dynamic probabilities set by frames
        processed meanwhile win over the job's copies. Returns False (and changes nothing) when
        the map was cleared since the job began (tracking lost, re-initialisation, reset)."""
        self._map_job_open = False
        if job.generation != self._map_generation:
            return False
        if isinstance(job, InitJob):
            return self._commit_init(job)
        m = job.map
        k, hit = lookup(self.lm_ids, m.lm_ids)
        lm_p = m.lm_p.copy()
        lm_p[hit] = self.lm_p[k[hit]]
        self.keyframes, self.lm_ids, self.lm_X, self.lm_p = m.keyframes, m.lm_ids, m.lm_X, lm_p
        self._kf_landmarks_seen = m._kf_landmarks_seen
        return True

    def _commit_init(self, job: "InitJob") -> bool:
        """Install the initial map an :class:`InitJob` built, if it built one and the estimator is
        still waiting for it. The frames processed since then had no map: the next one is
        tracked on this map from the job frame's pose (the motion model continues from the
        reference and the job's frame)."""
        self._init_why = job.why
        if job.outcome is None or self.state == TrackingState.TRACKING:
            return False
        m = job.map
        self.keyframes, self.lm_ids, self.lm_X, self.lm_p = m.keyframes, m.lm_ids, m.lm_X, m.lm_p
        self._kf_landmarks_seen = m._kf_landmarks_seen
        self._frames_since_kf = 0
        ref, stamp_ns, ids, xn = job.init_args[:4]
        T_cw, self._info, self._sigma2 = job.outcome
        was_lost = self._start_tracking(ref)
        self._remember_tracked(stamp_ns, ids, xn, T_cw, geo.invert(T_cw))
        self._init_news = (self._init_message(was_lost), was_lost, stamp_ns)
        return True

    def _remember_tracked(self, stamp_ns, ids, xn, T_cw, T_wc) -> np.ndarray:
        """A frame tracked on the map: its pose enters the motion model, and it becomes the last
        good frame (the reference of a re-initialisation after a loss). Returns each track's
        landmark depth in this camera (NaN: none), which the field stage consumes."""
        self._history.append((stamp_ns, T_wc))
        k, hit = lookup(self.lm_ids, ids)
        depth = np.full(ids.shape[0], np.nan)
        if hit.any():
            depth[hit] = geo.transform(T_cw, self.lm_X[k[hit]])[:, 2]
        self._last_good = dict(ids=ids, xn=xn, T_wc=T_wc, stamp=stamp_ns, depth=depth,
                               depth_target=float(np.nanmedian(depth)) if hit.any() else 1.0)
        return depth

    def _add_keyframe(self, stamp_ns, ids, xn, T_cw, p_dynamic, triangulate=True) -> None:
        o = np.argsort(ids)
        self.keyframes.append(Keyframe(stamp_ns, T_cw.copy(), ids[o], xn[o]))
        if triangulate:
            self._triangulate_new(ids[o], xn[o], p_dynamic[o])
        self._bundle_adjust()
        self._cull()
        while len(self.keyframes) > self.cfg.window_size_keyframes:
            self.keyframes.pop(0)
        self._drop_unobserved()
        _, hit = lookup(self.lm_ids, self.keyframes[-1].ids)
        self._kf_landmarks_seen = int(hit.sum())

    def _triangulate_new(self, ids, xn, p_dynamic) -> None:
        """New landmarks for tracks of the newest keyframe seen in an older window keyframe
        (the oldest one, for the widest baseline)."""
        c = self.cfg
        cur = self.keyframes[-1]
        _, is_lm = lookup(self.lm_ids, ids)
        todo = ~is_lm & (p_dynamic < c.window_dynamic_threshold)
        new_ids, new_X = [], []
        C2 = geo.invert(cur.T_cw)[:3, 3]
        for kf in self.keyframes[:-1]:
            if not todo.any():
                break
            kk, seen = lookup(kf.ids, ids)
            sel = todo & seen
            if not sel.any():
                continue
            x1, x2 = kf.xn[kk[sel]], xn[sel]
            X = geo.triangulate(kf.T_cw[:3], cur.T_cw[:3], x1, x2)
            fin = np.all(np.isfinite(X), axis=1)
            Xs = np.where(fin[:, None], X, 0.0)
            e1 = np.linalg.norm(geo.reprojection_error(kf.T_cw, Xs, x1), axis=1) * self._f
            e2 = np.linalg.norm(geo.reprojection_error(cur.T_cw, Xs, x2), axis=1) * self._f
            par = geo.parallax_deg(geo.invert(kf.T_cw)[:3, 3], C2, Xs)
            ok = fin & (e1 < c.window_inlier_px) & (e2 < c.window_inlier_px) & (par > c.window_tri_min_parallax_deg)
            ok &= self._tri_depth_error(e1, e2, par) < c.window_tri_max_depth_error
            if c.window_tri_check_window:
                ok &= self._consistent_in_window(ids[sel], Xs, kf)
            # Too little parallax: leave it for a later keyframe with a wider baseline.
            idx = np.flatnonzero(sel)
            done = idx[ok]
            todo[done] = False
            new_ids.append(ids[done])
            new_X.append(Xs[ok])
        if new_ids:
            ni = np.concatenate(new_ids)
            if ni.size:
                allid = np.concatenate([self.lm_ids, ni])
                o = np.argsort(allid)
                self.lm_ids = allid[o]
                self.lm_X = np.concatenate([self.lm_X, np.concatenate(new_X)])[o]
                self.lm_p = np.concatenate([self.lm_p, np.zeros(ni.size)])[o]

    def _tri_depth_error(self, e1: np.ndarray, e2: np.ndarray, par_deg: np.ndarray) -> np.ndarray:
        """Relative depth uncertainty of two-view points with reprojection errors ``e1``, ``e2``
        (pixels) and parallax ``par_deg``: the error along the epipolar line over the parallax in
        pixels. The along-line error is not observable from two views; the across-line one is
        (e1 + e2), and a drifting track drifts both ways, so the larger of it and the noise of
        two observations (tracking residual sigma) stands for it."""
        along = np.maximum(np.sqrt(2.0 * self._sigma2), e1 + e2)
        return along / (self._f * np.radians(np.maximum(par_deg, 1e-9)))

    def _consistent_in_window(self, ids, X, skip) -> np.ndarray:
        """(N,) bool: the points X (N, 3) of tracks ``ids`` reproject within window_inlier_px in
        every window keyframe that observed them (besides ``skip`` and the newest one)."""
        ok = np.ones(ids.shape[0], bool)
        for kf in self.keyframes[:-1]:
            if kf is skip:
                continue
            kk, seen = lookup(kf.ids, ids)
            if not seen.any():
                continue
            e = np.linalg.norm(geo.reprojection_error(kf.T_cw, X[seen], kf.xn[kk[seen]]), axis=1) * self._f
            ok[np.flatnonzero(seen)[~(e < self.cfg.window_inlier_px)]] = False
        return ok

    def _observations(self):
        """All (keyframe, landmark) observations in the window as flat arrays."""
        kfi, lmi, obs = [], [], []
        for i, kf in enumerate(self.keyframes):
            k, hit = lookup(self.lm_ids, kf.ids)
            kfi.append(np.full(hit.sum(), i))
            lmi.append(k[hit])
            obs.append(kf.xn[hit])
        return np.concatenate(kfi), np.concatenate(lmi), np.concatenate(obs)

    def _bundle_adjust(self) -> None:
        """Windowed bundle adjustment, Levenberg-Marquardt with a Schur complement on the points.

        Poses: left perturbations of T_cam_world; the oldest ``window_fixed_keyframes`` keyframes
        are fixed (one only while the window holds two). Residuals in pixels, Huber-robust and
        weighted by 1 - p_dynamic of the landmark.
        """
        c = self.cfg
        f = self._f
        P = len(self.keyframes)
        if c.window_ba_iterations == 0 or P < 2 or self.lm_ids.size == 0:
            return
        kfi, lmi, obs = self._observations()
        # Only landmarks seen at least twice in the window are constrained.
        cnt = np.bincount(lmi, minlength=self.lm_ids.size)
        keep = cnt[lmi] >= 2
        kfi, lmi, obs = kfi[keep], lmi[keep], obs[keep]
        if kfi.size < 12:
            return
        used, lmc = np.unique(lmi, return_inverse=True)    # compact landmark indices
        M = used.size
        X = self.lm_X[used].copy()
        wdyn = self._weights(self.lm_p[used])[lmc]
        n_fixed = min(int(c.window_fixed_keyframes), P - 1)
        free = np.arange(n_fixed, P)
        F = free.size
        Ts = np.stack([kf.T_cw for kf in self.keyframes])
        delta = c.window_huber_px
        loss = c.window_robust_loss

        def residuals(Ts, X):
            Xc = np.einsum("nij,nj->ni", Ts[kfi, :3, :3], X[lmc]) + Ts[kfi, :3, 3]
            z = Xc[:, 2]
            r = (Xc[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[:, None] - obs) * f
            r[z <= 1e-9] = 1e3 / np.sqrt(2)
            return Xc, r

        def cost(r):
            return float(np.sum(wdyn * robust_cost(np.linalg.norm(r, axis=1), delta, loss)))

        Xc, r = residuals(Ts, X)
        cur_cost = cost(r)
        lam = 1e-3
        pose_slot = np.full(P, -1)
        pose_slot[free] = np.arange(F)
        for _ in range(int(c.window_ba_iterations)):
            front = Xc[:, 2] > 1e-9
            Jx, Jp = _proj_jacobians(np.where(front[:, None], Xc, [0, 0, 1.0]), f)
            Jl = Jx @ Ts[kfi, :3, :3]
            wt = wdyn * robust_weights(np.linalg.norm(r, axis=1), delta, loss) * front
            WJl = Jl * wt[:, None, None]
            WJp = Jp * wt[:, None, None]
            Hll = np.zeros((M, 3, 3))
            np.add.at(Hll, lmc, np.einsum("nai,naj->nij", WJl, Jl))
            gl = np.zeros((M, 3))
            np.add.at(gl, lmc, np.einsum("nai,na->ni", WJl, r))
            slot = pose_slot[kfi]
            fo = slot >= 0
            Hpp = np.zeros((F, 6, 6))
            np.add.at(Hpp, slot[fo], np.einsum("nai,naj->nij", WJp[fo], Jp[fo]))
            gp = np.zeros((F, 6))
            np.add.at(gp, slot[fo], np.einsum("nai,na->ni", WJp[fo], r[fo]))
            Hpl_obs = np.einsum("nai,naj->nij", WJp[fo], Jl[fo])          # (O_free, 6, 3)
            # Dense pose-landmark block (6F x 3M): each (pose, landmark) pair occurs once.
            Hpl = np.zeros((F, M, 6, 3))
            Hpl[slot[fo], lmc[fo]] = Hpl_obs
            Hpl = Hpl.transpose(0, 2, 1, 3).reshape(6 * F, 3 * M)
            Hpp_full = np.zeros((6 * F, 6 * F))
            for i in range(F):          # F <= window size: a short loop over diagonal blocks
                Hpp_full[6 * i:6 * i + 6, 6 * i:6 * i + 6] = Hpp[i]
            Hll_diag = np.einsum("mii->mi", Hll)
            improved = False
            for _retry in range(4):     # Levenberg-Marquardt: raise damping until the cost drops
                Hll_inv = np.linalg.inv(Hll + lam * (Hll_diag[:, :, None] + 1e-6) * np.eye(3))
                Y = np.einsum("pmi,mij->pmj", Hpl.reshape(6 * F, M, 3), Hll_inv).reshape(6 * F, 3 * M)
                S = Hpp_full + lam * np.diag(np.diag(Hpp_full) + 1e-6) - Y @ Hpl.T
                b = -gp.ravel() + Y @ gl.ravel()
                try:
                    dp = np.linalg.solve(S, b)
                except np.linalg.LinAlgError:
                    lam *= 10.0
                    continue
                dl = np.einsum("mij,mj->mi", Hll_inv, -gl - (Hpl.T @ dp).reshape(M, 3))
                Ts_new = Ts.copy()
                Ts_new[free] = geo.se3_exp(dp.reshape(F, 6)) @ Ts[free]
                X_new = X + dl
                Xc_new, r_new = residuals(Ts_new, X_new)
                new_cost = cost(r_new)
                if new_cost < cur_cost:
                    gain = cur_cost - new_cost
                    Ts, X, Xc, r, cur_cost = Ts_new, X_new, Xc_new, r_new, new_cost
                    lam = max(lam / 3.0, 1e-7)
                    improved = True
                    break
                lam *= 10.0
            if not improved or gain < 1e-4 * cur_cost:
                break
        for i, kf in enumerate(self.keyframes):
            kf.T_cw = Ts[i]
        self.lm_X[used] = X

    def _cull(self) -> None:
        """Remove landmarks that are dynamic, behind a camera or inconsistent in the window."""
        c = self.cfg
        if self.lm_ids.size == 0:
            return
        kfi, lmi, obs = self._observations()
        Ts = np.stack([kf.T_cw for kf in self.keyframes])
        Xc = np.einsum("nij,nj->ni", Ts[kfi, :3, :3], self.lm_X[lmi]) + Ts[kfi, :3, 3]
        z = Xc[:, 2]
        err = np.linalg.norm(Xc[:, :2] / np.where(z > 1e-9, z, 1e-9)[:, None] - obs, axis=1) * self._f
        bad_obs = (z <= 1e-9) | (err > 2.0 * c.window_inlier_px)
        n_bad = np.bincount(lmi, weights=bad_obs, minlength=self.lm_ids.size)
        n_obs = np.bincount(lmi, minlength=self.lm_ids.size)
        bad = (n_bad > 0.5 * np.maximum(n_obs, 1)) | (self.lm_p > c.window_dynamic_cull)
        # A landmark with some bad observations but mostly good ones stays (a KLT slip).
        self._remove_landmarks(bad)

    def _drop_unobserved(self) -> None:
        if self.lm_ids.size == 0:
            return
        seen = np.zeros(self.lm_ids.size, bool)
        for kf in self.keyframes:
            k, hit = lookup(self.lm_ids, kf.ids)
            seen[k[hit]] = True
        self._remove_landmarks(~seen)

    def _remove_landmarks(self, mask: np.ndarray) -> None:
        keep = ~mask
        self.lm_ids, self.lm_X, self.lm_p = self.lm_ids[keep], self.lm_X[keep], self.lm_p[keep]

    # ------------------------------------------------------------------ outputs
    def _covariance(self, T_wc: np.ndarray) -> np.ndarray:
        """6x6 covariance of T_world_cam (position, rotation; world frame)."""
        try:
            cov_local = np.linalg.inv(self._info + np.eye(6) * 1e-9) * self._sigma2
        except np.linalg.LinAlgError:
            return np.eye(6) * 1e3
        # T_cw' = exp(d) T_cw  =>  T_wc' = T_wc exp(-d): world position and rotation
        # perturbations are -R_wc d_rho and -R_wc d_phi to first order.
        A = np.zeros((6, 6))
        A[:3, :3] = T_wc[:3, :3]
        A[3:, 3:] = T_wc[:3, :3]
        cov = A @ cov_local @ A.T
        return 0.5 * (cov + cov.T)

    def _velocity(self, newest: tuple[int, np.ndarray]) -> np.ndarray | None:
        """(vx, vy, vz, wx, wy, wz) in the world frame by finite differences over recent frames,
        ending at ``newest`` (stamp, T_world_cam), the frame not yet in the history."""
        history = list(self._history)[-int(self.cfg.window_velocity_frames):] + [newest]
        if len(history) < 2:
            return None
        (t0, T0), (t1, T1) = history[0], history[-1]
        dt = (t1 - t0) * 1e-9
        if dt <= 0:
            return None
        v = (T1[:3, 3] - T0[:3, 3]) / dt
        w = geo.so3_log(T1[:3, :3] @ T0[:3, :3].T) / dt
        return np.concatenate([v, w])


class MapJob:
    """Keyframe insertion (triangulation, bundle adjustment, culling) on a private copy of a
    window's map: ``run()`` needs no lock and may take tens of milliseconds while the window
    keeps tracking on its current map; ``SlidingWindowEstimator.commit_map_job`` installs the
    result. ``map`` is the copy, a ``SlidingWindowEstimator`` view that other window-level
    refinements could also work on before the commit."""

    def __init__(self, window: SlidingWindowEstimator, keyframe_args):
        self.generation = window._map_generation
        self.keyframe_args = keyframe_args
        m = object.__new__(SlidingWindowEstimator)
        m.__dict__.update(window.__dict__)
        # Arrays the mapping functions write in place, and the keyframes they refine, are copied;
        # everything else is read only.
        m.keyframes = [Keyframe(kf.stamp_ns, kf.T_cw.copy(), kf.ids, kf.xn) for kf in window.keyframes]
        m.lm_ids, m.lm_X, m.lm_p = window.lm_ids.copy(), window.lm_X.copy(), window.lm_p.copy()
        self.map = m

    def run(self) -> None:
        self.map._add_keyframe(*self.keyframe_args)


class InitJob:
    """The two-view initialisation of :meth:`SlidingWindowEstimator.begin_map_job` (with
    ``init_async``): the essential-matrix analysis and the initial map, on a copy of the
    estimator, so that the pose stage keeps taking frames meanwhile (the analysis takes tens to
    hundreds of milliseconds: several frames of a 60 Hz camera). ``run()`` needs no lock;
    ``commit_map_job`` installs the map. ``outcome``: (T_cam_world of the job's frame, pose
    information, residual variance) when a map was built, else None (``why`` says why not)."""

    def __init__(self, window: SlidingWindowEstimator, init_args):
        self.generation = window._map_generation
        self.init_args = init_args      # (ref, stamp_ns, ids, xn, p_prior, usable, x1, x2)
        m = object.__new__(SlidingWindowEstimator)
        m.__dict__.update(window.__dict__)
        m.keyframes = []                # the copy builds its own map; the window's stays as it is
        self.map = m
        self.outcome = None
        self.why = "not run"

    def run(self) -> None:
        self.why, self.outcome = self.map.initial_map(*self.init_args)
