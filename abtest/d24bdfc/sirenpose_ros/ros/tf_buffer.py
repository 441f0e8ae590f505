"""A small transform store fed from /tf and /tf_static, for looking up the camera extrinsic.

tf2_ros is not available without a ROS install, and the node needs only one lookup (base ->
camera, a fixed transform), so this keeps the latest transform per edge and chains edges.
Where tf2_ros exists it would serve equally; this keeps one code path on every machine.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np


class TransformStore:
    def __init__(self) -> None:
        self._edges: dict[tuple[str, str], np.ndarray] = {}   # (parent, child) -> T_parent_child
        self._lock = threading.Lock()

    def set(self, parent: str, child: str, T: np.ndarray) -> None:
        with self._lock:
            self._edges[(parent.lstrip("/"), child.lstrip("/"))] = np.asarray(T, dtype=np.float64)

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """T_target_source (maps points in ``source`` to ``target``), or None if not connected."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        with self._lock:
            edges = dict(self._edges)
        adjacent: dict[str, list[tuple[str, np.ndarray]]] = {}
        for (parent, child), T in edges.items():
            adjacent.setdefault(parent, []).append((child, T))
            adjacent.setdefault(child, []).append((parent, np.linalg.inv(T)))
        # Breadth-first from target; each step composes T_target_node.
        seen = {target}
        queue = deque([(target, np.eye(4))])
        while queue:
            frame, T_tf = queue.popleft()
            for nxt, T_step in adjacent.get(frame, []):
                if nxt in seen:
                    continue
                T_next = T_tf @ T_step
                if nxt == source:
                    return T_next
                seen.add(nxt)
                queue.append((nxt, T_next))
        return None
