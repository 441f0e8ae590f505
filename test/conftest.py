"""Test-session set-up: DDS never leaves this host, and each run gets a private domain."""
import os

import pytest

from sirenpose_ros.ros.dds import confine_this_process, private_domain_id

# Before any test imports rclpy: child processes inherit this environment too.
confine_this_process(private_domain_id())
os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture
def session(tmp_path, request):
    """Factory of RosSession (node process + publisher + recorder), closed after the test.
    Parameters: the test module's ``FAST`` dict, overridden by ``params=``."""
    import rclpy
    from ros_harness import RosSession
    sessions = []

    def make(**kw):
        params = dict(getattr(request.module, "FAST", {}), **kw.pop("params", {}))
        s = RosSession(tmp_path, params=params, **kw)
        sessions.append(s)
        s.wait_connected()
        return s
    yield make
    for s in sessions:
        s.close()
    if rclpy.ok():
        rclpy.shutdown()


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one torch thread (on the busy 2-core test machine extra OpenMP threads only
    wait on each other). Restored afterwards."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
