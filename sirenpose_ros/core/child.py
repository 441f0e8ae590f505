"""A child interpreter that answers requests over pipes (ROS-free).

The pipeline's stages are NumPy/torch code made of many small operations: on threads they hold
Python's GIL most of the time, so a second stage on a thread slows the first by about as much as
it takes (measured on the H100 host: stage times doubled under the staged runner). Work whose
inputs and outputs are small and self-contained (a keyframe's map copy, a window snapshot, a
grey image -> keypoint tracks) runs in a child process instead.

The child is a fresh interpreter (``python -m <module> <fd_in> <fd_out>``), never ``fork``: the
parent has threads and possibly a CUDA context; not ``multiprocessing``'s spawn either, which
re-runs the parent's main module and so breaks scripts without a ``__main__`` guard. Messages are
pickled through ``multiprocessing.connection.Connection`` on two ``os.pipe`` pairs. Payloads must
be plain Python / NumPy: torch registers shared-memory reducers for tensors with that pickler,
which pass file descriptors a plain pipe cannot carry.

Protocol: the parent sends its parameter values once; the child sets its thread limits from them,
builds its stage object and answers ``("ready", info)``; then each request ``(method, *args)`` is
answered ``("ok", stage.method(*args))`` or ``("error", (exception type name, text))``; ``None``
or a closed pipe ends the child. One request at a time per worker.
"""
from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Callable


class ChildError(RuntimeError):
    """An exception raised in the child; ``child_type`` is its class name (e.g.
    ``OutOfMemoryError``, which the node answers by degrading)."""

    def __init__(self, worker: str, child_type: str, text: str):
        super().__init__(f"{worker}: {child_type}: {text}")
        self.child_type = child_type


class ChildStage:
    """Base of the stage wrappers that own one :class:`ChildWorker` (``self._child``)."""

    _child: "ChildWorker"

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def alive(self) -> bool:
        return self._child.alive

    def close(self, timeout: float = 5.0) -> None:
        self._child.close(timeout)


def error_type(exc: BaseException) -> str:
    """The class name of ``exc``, or of the child's exception it reports."""
    return getattr(exc, "child_type", None) or type(exc).__name__


def serve(make_stage: Callable[[object], tuple[object, object]]) -> None:
    """Child side (call from the module's ``__main__``): ``make_stage(cfg)`` builds the stage
    object from the parent's parameter values and returns ``(stage, info)``; each request
    ``(method, *args)`` is answered with ``stage.method(*args)``."""
    conn_in = Connection(int(sys.argv[1]), writable=False)
    conn = Connection(int(sys.argv[2]), readable=False)
    try:
        from sirenpose_ros.core.config import make_config
        from sirenpose_ros.core.pipeline import apply_thread_limits
        cfg = make_config(conn_in.recv())
        apply_thread_limits(cfg)
        stage, info = make_stage(cfg)
    except Exception as exc:          # noqa: BLE001 - the parent raises it
        conn.send(("error", (type(exc).__name__, str(exc))))
        return
    conn.send(("ready", info))
    while True:
        try:
            msg = conn_in.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            conn.send(("ok", getattr(stage, msg[0])(*msg[1:])))
        except Exception as exc:      # noqa: BLE001 - the parent raises it
            conn.send(("error", (type(exc).__name__, str(exc))))


class ChildWorker:
    """Parent side: start ``python -m module``, send the parameter values, wait for its ``ready``.

    ``info`` holds what the child answered with ``ready``. ``start_timeout_s``: the child imports
    NumPy, OpenCV and torch and may load networks (seconds on a busy machine); the wait happens
    here, at start-up, not in the first frame while the camera is already moving."""

    def __init__(self, module: str, cfg_values: dict, name: str, start_timeout_s: float = 120.0):
        self.name = name
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        # The child resolves imports as this process does (editable install, PYTHONPATH, cwd).
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module, str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        self._send.send(dict(cfg_values))
        if not self._recv.poll(start_timeout_s):
            self.close()
            raise RuntimeError(f"{name} process did not start within {start_timeout_s:.0f} s")
        try:
            status, value = self._recv.recv()
        except EOFError:
            status, value = "exited", None
        if status != "ready":
            self.close()
            detail = f": {value[0]}: {value[1]}" if status == "error" else ""
            raise RuntimeError(f"{name} process failed to start{detail}")
        self.info = value

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def call(self, *msg):
        """Send one request and wait for its answer (the GIL is released while waiting)."""
        self.submit(*msg)
        return self.result()

    def submit(self, *msg) -> None:
        """Send one request without waiting: the child works on it while this process goes on;
        :meth:`result` collects the answer (one request outstanding at a time)."""
        if self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} process exited (code {self._proc.returncode})")
        try:
            self._send.send(msg)
        except OSError as exc:
            raise RuntimeError(f"{self.name} process exited ({exc})") from exc

    def ready(self) -> bool:
        """Whether the answer to the request :meth:`submit` sent has arrived (or the child
        exited: :meth:`result` then raises)."""
        return self._recv.poll(0) or self._proc.poll() is not None

    def result(self):
        """The answer to the request :meth:`submit` sent (waits for it)."""
        try:
            status, value = self._recv.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"{self.name} process exited ({exc})") from exc
        if status != "ok":
            raise ChildError(self.name, *value)
        return value

    def close(self, timeout: float = 5.0) -> None:
        if self._proc.poll() is None:
            try:
                self._send.send(None)
            except OSError:
                pass
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for c in (self._send, self._recv):
            if not c.closed:
                c.close()
