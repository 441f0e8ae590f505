"""Where the package's installed files (config, launch, models) are."""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "sirenpose_ros"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def share_dir() -> Path:
    """The package's share folder: the ROS install's, a pip install's, or the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not a ROS install, or not installed there
        pass
    if (_SOURCE_ROOT / "config").is_dir() and (_SOURCE_ROOT / "package.xml").is_file():
        return _SOURCE_ROOT
    prefix = Path(sys.prefix) / "share" / PACKAGE
    if prefix.is_dir():
        return prefix
    raise FileNotFoundError(f"cannot find the {PACKAGE} share folder (config, launch, models)")


def config_file(name: str) -> Path:
    path = share_dir() / "config" / name
    if not path.is_file():
        raise FileNotFoundError(f"missing config file {path}")
    return path
