"""On-disk cache for built artefacts (ONNX files, TensorRT engines).

An engine is only valid for the exact ONNX graph, TensorRT version, GPU model and precision it
was built for, so all of them go into the key. Writes are atomic (temp file in the same folder,
fsync, rename) so a crash or a second process never leaves a half-written engine under a valid
name. A file that fails to load is deleted and rebuilt, with a warning.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/sirenpose_ros`` (``~/.cache/sirenpose_ros`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sirenpose_ros"


def cache_subdir(cache_dir, kind: str) -> Path:
    """``cache_dir/kind`` (``kind`` is "onnx" or "engines"); the default root when None."""
    return Path(cache_dir if cache_dir is not None else default_cache_root()) / kind


def engine_cache_key(onnx_bytes: bytes, trt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int], precision: str) -> str:
    """Hex key of everything an engine depends on. The ONNX graph is hashed by content (not by
    file name), so a re-export that changes the graph also changes the key."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(onnx_bytes).digest())
    for part in (trt_version, gpu_name, f"sm{compute_capability[0]}{compute_capability[1]}",
                 precision):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


class EngineCache:
    """Serialized engines stored as ``<dir>/<prefix>-<key>.engine``."""

    def __init__(self, cache_dir=None) -> None:
        self.dir = cache_subdir(cache_dir, "engines")

    def path(self, key: str, prefix: str = "") -> Path:
        return self.dir / (f"{prefix}-{key[:32]}.engine" if prefix else f"{key}.engine")

    def load(self, key: str, deserialize: Callable[[bytes], T | None], prefix: str = "") -> T | None:
        """The deserialized engine, or None when absent. A file that does not deserialize (the
        call raises or returns None: truncated, built by another TensorRT, foreign GPU) is
        deleted so that the caller rebuilds it."""
        path = self.path(key, prefix)
        if not path.is_file():
            return None
        try:
            engine = deserialize(path.read_bytes())
            problem = None if engine is not None else "deserializer returned None"
        except Exception as exc:
            engine, problem = None, f"{type(exc).__name__}: {exc}"
        if engine is None:
            log.warning("engine cache: %s is unusable (%s); deleting it and rebuilding", path,
                        problem)
            path.unlink(missing_ok=True)
        return engine

    def store(self, key: str, data: bytes, prefix: str = "") -> Path:
        return atomic_write_bytes(self.path(key, prefix), data)

    def get_or_build(self, key: str, build: Callable[[], bytes],
                     deserialize: Callable[[bytes], T | None], prefix: str = "") -> T:
        """Cached engine if it loads, else ``build()`` (serialized bytes), store, deserialize."""
        engine = self.load(key, deserialize, prefix)
        if engine is not None:
            log.info("engine cache: hit %s", self.path(key, prefix))
            return engine
        data = build()
        path = self.store(key, data, prefix)
        log.info("engine cache: built and stored %s (%.1f MB)", path, len(data) / 1e6)
        engine = deserialize(data)
        if engine is None:   # a fresh build that does not load is a TensorRT/driver problem
            path.unlink(missing_ok=True)
            raise RuntimeError(f"a freshly built engine for {prefix or key} does not deserialize")
        return engine
