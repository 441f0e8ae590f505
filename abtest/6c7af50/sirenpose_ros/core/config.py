"""The pipeline's configuration: every module's ``PARAMS`` gathered and validated in one place."""
from __future__ import annotations

from typing import Any

from sirenpose_ros.core.params import ParamSpec, validate


class Config(dict):
    """Validated parameter values with attribute access (``cfg.max_keypoints``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def pipeline_params() -> list[ParamSpec]:
    """All parameter specs of the core pipeline (imported lazily to keep module import cheap)."""
    from sirenpose_ros.core import (cloud, field, frontend, graph, image, joint, losses, motion_gnn,
                                     pipeline, scale, window, xfeat_frontend)
    specs: list[ParamSpec] = []
    for mod in (image, pipeline, frontend, xfeat_frontend, graph, motion_gnn, window, joint, losses,
                field, cloud, scale):
        specs.extend(getattr(mod, "PARAMS", []))
    names = [s.name for s in specs]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"parameter declared twice: {dupes}"
    return specs


def make_config(values: dict[str, Any] | None = None) -> Config:
    """Defaults overlaid with ``values``; raises ParamError on unknown names or bad values."""
    return Config(validate(pipeline_params(), values or {}))
