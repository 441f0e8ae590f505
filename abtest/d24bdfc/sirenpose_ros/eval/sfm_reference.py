"""Offline structure-from-motion reference: COLMAP (through ``pycolmap``, CPU) on a folder of images.

Used as the "what an offline method gets on the same frames" row of the accuracy benchmark and
to check the pipeline's relative poses on real frames. SIFT features, sequential or exhaustive
matching with geometric verification, incremental mapping, with the intrinsics held fixed at the
given pinhole K (the pipeline gets the same K, so the comparison is about poses, not
self-calibration).

``pycolmap`` is a benchmark-only dependency (requirements-bench.txt); it is imported lazily so
that this module imports without it (``have_pycolmap()`` says whether it is there).

COLMAP may split a sequence into several models when a stretch cannot be connected (too little
parallax, too few matches). Models have unrelated frames and scales, so only the model with the
most registered images is returned; ``n_models`` says how many there were.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def have_pycolmap() -> bool:
    try:
        import pycolmap  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class SfmResult:
    names: list[str]                 # image file names, in the order poses are given
    T_world_cam: np.ndarray          # (N, 4, 4) camera-to-world; NaN rows for unregistered images
    registered: np.ndarray           # (N,) bool
    n_models: int                    # models COLMAP built (only the largest is returned)
    n_points3d: int                  # 3D points of the returned model
    mean_reproj_error_px: float      # of the returned model (NaN without one)
    wall_s: float                    # extraction + matching + mapping
    options: dict = field(default_factory=dict)

    @property
    def registered_share(self) -> float:
        return float(self.registered.mean()) if self.registered.size else 0.0


def list_images(folder: str | Path) -> list[str]:
    """Image file names in ``folder`` (sorted: the frame order of a sequence)."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def write_frames(rgb: np.ndarray, folder: str | Path, prefix: str = "frame") -> list[str]:
    """Write (N, H, W, 3) uint8 RGB frames as lossless PNGs ``{prefix}_{i:05d}.png``; -> names."""
    import cv2
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(rgb):
        name = f"{prefix}_{i:05d}.png"
        if not cv2.imwrite(str(folder / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {folder / name}")
        names.append(name)
    return names


def _world_from_cam(cam_from_world) -> np.ndarray:
    """pycolmap Rigid3d cam_from_world -> 4x4 T_world_cam."""
    M = np.eye(4)
    M[:3, :4] = np.asarray(cam_from_world.matrix(), np.float64)
    return np.linalg.inv(M)


def _cam_from_world(image):
    """An Image's cam_from_world across pycolmap versions (method in 3.11+, attribute before)."""
    c = image.cam_from_world
    return c() if callable(c) else c


def run_sfm(image_dir: str | Path, K: np.ndarray, image_names: Sequence[str] | None = None,
            matching: str = "sequential", overlap: int = 10, max_features: int = 4096,
            num_threads: int = 2, seed: int = 0, work_dir: str | Path | None = None,
            min_model_size: int = 3, init_min_tri_angle_deg: float = 4.0,
            init_max_forward_motion: float = 0.995, mask_dir: str | Path | None = None,
            verbose: bool = False) -> SfmResult:
    """Reconstruct the images of ``image_dir`` with intrinsics ``K`` (3x3 pinhole, all images).

    ``matching``: 'sequential' (each image with the next ``overlap``; for video) or
    'exhaustive' (all pairs; for a few wide-baseline frames). ``num_threads``: CPU threads of
    every stage. ``seed``: COLMAP's random seed (RANSAC, initial pair), for repeatable runs.
    ``work_dir``: where the database and models go (a temporary folder, removed, by default).
    ``init_min_tri_angle_deg`` / ``init_max_forward_motion``: COLMAP's initial-pair
    requirements. Its defaults (16 degrees, 0.95) suit photo collections; a video of a camera
    walking forward through a room has neither such wide angles nor sideways pairs, and with
    them no model was built at all on the synthetic sequences.
    ``mask_dir``: optional COLMAP masks, ``<image name>.png`` per image, features are not
    extracted where the mask is 0 (e.g. the ground-truth moving objects: an oracle reference).
    ``verbose``: keep COLMAP's INFO log (thousands of lines per run) on stderr.
    Raises ImportError without pycolmap, ValueError on bad arguments.
    """
    import pycolmap

    image_dir = Path(image_dir).resolve()
    names = list(image_names) if image_names is not None else list_images(image_dir)
    if len(names) < 2:
        raise ValueError(f"{image_dir}: need at least 2 images, found {len(names)}")
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be 3x3, got {K.shape}")
    if matching not in ("sequential", "exhaustive"):
        raise ValueError(f"matching must be 'sequential' or 'exhaustive', got {matching!r}")

    tmp = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="sfm_ref_")
        work = Path(tmp)
    else:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    if db.exists():
        db.unlink()                    # a stale database would add its images twice
    pycolmap.logging.minloglevel = 0 if verbose else 2       # 2: errors only
    t0 = time.perf_counter()
    try:
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        # COLMAP puts the centre of the top-left pixel at (0.5, 0.5); this project (OpenCV) at
        # (0, 0): shift the principal point by half a pixel.
        reader.camera_params = ",".join(f"{v:.10g}" for v in (K[0, 0], K[1, 1], K[0, 2] + 0.5,
                                                                K[1, 2] + 0.5))
        if mask_dir is not None:
            reader.mask_path = str(Path(mask_dir).resolve())
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = num_threads
        extraction.sift.max_num_features = max_features
        pycolmap.extract_features(db, image_dir, image_names=names,
                                  camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                                  extraction_options=extraction, device=pycolmap.Device.cpu)
        match_opts = pycolmap.FeatureMatchingOptions()
        match_opts.num_threads = num_threads
        if matching == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = overlap
            pairing.num_threads = num_threads
            pycolmap.match_sequential(db, matching_options=match_opts, pairing_options=pairing,
                                      device=pycolmap.Device.cpu)
        else:
            pycolmap.match_exhaustive(db, matching_options=match_opts, device=pycolmap.Device.cpu)

        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = num_threads
        opts.random_seed = seed
        opts.min_model_size = min_model_size
        # Known intrinsics: keep them fixed, as the pipeline does.
        opts.ba_refine_focal_length = False
        opts.ba_refine_principal_point = False
        opts.ba_refine_extra_params = False
        opts.mapper.abs_pose_refine_focal_length = False
        opts.mapper.abs_pose_refine_extra_params = False
        opts.mapper.init_min_tri_angle = init_min_tri_angle_deg
        opts.mapper.init_max_forward_motion = init_max_forward_motion
        models = pycolmap.incremental_mapping(db, image_dir, work / "sparse", options=opts)
        wall = time.perf_counter() - t0

        T = np.full((len(names), 4, 4), np.nan)
        registered = np.zeros(len(names), bool)
        n_points, reproj = 0, float("nan")
        if models:
            best = max(models.values(), key=lambda r: r.num_reg_images())
            index = {n: i for i, n in enumerate(names)}
            for image in best.images.values():
                i = index.get(image.name)
                if i is None or not image.has_pose:
                    continue
                T[i] = _world_from_cam(_cam_from_world(image))
                registered[i] = True
            n_points = int(best.num_points3D())
            reproj = float(best.compute_mean_reprojection_error())
        return SfmResult(names, T, registered, len(models), n_points, reproj, wall,
                         {"matching": matching, "overlap": overlap, "max_features": max_features,
                          "seed": seed, "init_min_tri_angle_deg": init_min_tri_angle_deg,
                          "init_max_forward_motion": init_max_forward_motion,
                          "masked": mask_dir is not None,
                          "pycolmap": pycolmap.__version__})
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run_sfm_on_frames(rgb: np.ndarray, K: np.ndarray, exclude: np.ndarray | None = None,
                      **kwargs) -> SfmResult:
    """:func:`run_sfm` on in-memory RGB frames (written as PNGs to a temporary folder).
    ``exclude``: optional (N, H, W) masks, nonzero where no feature may be taken."""
    import cv2
    with tempfile.TemporaryDirectory(prefix="sfm_frames_") as d:
        names = write_frames(rgb, Path(d) / "images")
        if exclude is not None:
            mdir = Path(d) / "masks"
            mdir.mkdir()
            for name, m in zip(names, exclude):
                cv2.imwrite(str(mdir / f"{name}.png"), np.where(m > 0, 0, 255).astype(np.uint8))
            kwargs["mask_dir"] = mdir
        return run_sfm(Path(d) / "images", K, image_names=names, **kwargs)


# ---------------------------------------------------------------------------------------------
# Relative-pose comparison (for frames without ground truth: agreement of two reconstructions)
# ---------------------------------------------------------------------------------------------

def relative_pose_errors(T_a: np.ndarray, T_b: np.ndarray, pairs: np.ndarray | None = None,
                         min_translation: float = 1e-9) -> dict:
    """Rotation error and translation-direction error (degrees) of relative poses.

    For each pair (i, j) (default: consecutive indices where both trajectories have finite
    poses), the relative motions A = T_a[i]^-1 T_a[j] and B = T_b[i]^-1 T_b[j] are compared:
    rotation error = angle(R_A^T R_B); direction error = angle between t_A and t_B (scale-free,
    so it works between two up-to-scale monocular reconstructions). Pairs whose translation is
    below ``min_translation`` in either estimate get NaN direction error.
    Returns dict(pairs (M, 2), rot_err_deg (M,), dir_err_deg (M,), and medians/means).
    """
    from sirenpose_ros.eval.metrics import rotation_angle
    T_a, T_b = np.asarray(T_a, np.float64), np.asarray(T_b, np.float64)
    if T_a.shape != T_b.shape or T_a.ndim != 3 or T_a.shape[1:] != (4, 4):
        raise ValueError(f"T_a and T_b must both be (N, 4, 4), got {T_a.shape} and {T_b.shape}")
    ok = np.isfinite(T_a).all(axis=(1, 2)) & np.isfinite(T_b).all(axis=(1, 2))
    if pairs is None:
        i = np.flatnonzero(ok[:-1] & ok[1:])
        pairs = np.stack([i, i + 1], axis=1)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if pairs.size and not (ok[pairs[:, 0]] & ok[pairs[:, 1]]).all():
        raise ValueError("a pair refers to a pose that is missing (NaN) in one trajectory")
    A = np.linalg.inv(T_a[pairs[:, 0]]) @ T_a[pairs[:, 1]]
    B = np.linalg.inv(T_b[pairs[:, 0]]) @ T_b[pairs[:, 1]]
    rot = np.degrees(rotation_angle(np.swapaxes(A[:, :3, :3], 1, 2) @ B[:, :3, :3]))
    ta, tb = A[:, :3, 3], B[:, :3, 3]
    na, nb = np.linalg.norm(ta, axis=1), np.linalg.norm(tb, axis=1)
    valid = (na > min_translation) & (nb > min_translation)
    cos = np.sum(ta * tb, axis=1) / np.where(valid, na * nb, 1.0)
    direction = np.where(valid, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), np.nan)

    def stat(fn, x):
        x = x[np.isfinite(x)]
        return float(fn(x)) if x.size else float("nan")
    return {"pairs": pairs, "rot_err_deg": rot, "dir_err_deg": direction, "n": int(len(pairs)),
            "rot_median_deg": stat(np.median, rot), "rot_mean_deg": stat(np.mean, rot),
            "dir_median_deg": stat(np.median, direction), "dir_mean_deg": stat(np.mean, direction)}
