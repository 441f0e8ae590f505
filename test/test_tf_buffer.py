import numpy as np

from sirenpose_ros.ros.tf_buffer import TransformStore


def _T(angle, t):
    c, s = np.cos(angle), np.sin(angle)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = t
    return T


def test_chain_and_inverse_lookup():
    store = TransformStore()
    T_base_mount, T_mount_cam = _T(0.3, [0.2, 0, 0.5]), _T(-1.0, [0.05, 0.01, 0])
    store.set("base_link", "mount", T_base_mount)
    store.set("/mount", "camera_optical", T_mount_cam)       # leading slash tolerated
    store.set("odom", "base_link", _T(2.0, [5, 5, 0]))
    assert np.allclose(store.lookup("base_link", "camera_optical"), T_base_mount @ T_mount_cam)
    assert np.allclose(store.lookup("camera_optical", "base_link"),
                       np.linalg.inv(T_base_mount @ T_mount_cam))
    assert np.allclose(store.lookup("base_link", "base_link"), np.eye(4))
    assert store.lookup("base_link", "other_camera") is None


def test_latest_transform_wins():
    store = TransformStore()
    store.set("a", "b", _T(0, [1, 0, 0]))
    store.set("a", "b", _T(0, [2, 0, 0]))
    assert store.lookup("a", "b")[0, 3] == 2
