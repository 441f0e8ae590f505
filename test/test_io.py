"""TUM trajectory and PLY cloud files: exact round trips and tolerant reading."""
import numpy as np
import pytest

from sirenpose_ros.core.types import Cloud
from sirenpose_ros.io.ply import read_ply, read_ply_header, write_ply
from sirenpose_ros.io.tum import matrix_to_quat, quat_to_matrix, read_tum, write_tum


def _axis_angle(axis, angle):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _test_rotations(rng, n_random=200):
    """Random rotations plus the hard cases: identity, exactly 180 degrees about several axes
    (w = 0), and angles a hair away from 180 degrees."""
    special = [np.eye(3)]
    for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -2, 3], [0, -1, 1]):
        special += [_axis_angle(axis, np.pi), _axis_angle(axis, np.pi - 1e-7),
                    _axis_angle(axis, 1e-9)]
    q = rng.normal(size=(n_random, 4))
    return np.concatenate([np.stack(special), quat_to_matrix(q)])


def test_quaternion_conversions_round_trip_including_180_degrees():
    rng = np.random.default_rng(1)
    R = _test_rotations(rng)
    q = matrix_to_quat(R)
    assert q.shape == (len(R), 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    assert np.all(q[:, 3] >= 0)
    np.testing.assert_allclose(quat_to_matrix(q), R, atol=1e-12)
    # 180 degrees about x is the quaternion (1, 0, 0, 0) up to sign.
    np.testing.assert_allclose(np.abs(matrix_to_quat(np.diag([1.0, -1, -1]))), [1, 0, 0, 0],
                               atol=1e-15)
    # quat -> matrix -> quat gives back the same quaternion up to sign.
    q0 = rng.normal(size=(50, 4))
    q0 /= np.linalg.norm(q0, axis=1, keepdims=True)
    q1 = matrix_to_quat(quat_to_matrix(q0))
    np.testing.assert_allclose(np.abs(np.sum(q0 * q1, axis=1)), 1.0, atol=1e-12)


def test_quat_to_matrix_rejects_zero_quaternion():
    with pytest.raises(ValueError):
        quat_to_matrix(np.zeros(4))


def test_tum_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(2)
    R = _test_rotations(rng, n_random=30)
    n = len(R)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = R
    T[:, :3, 3] = rng.normal(scale=5.0, size=(n, 3))
    # Stamps a float64 cannot hold: 19 significant digits, plus 0 and a negative one.
    stamps = 1_700_000_000_123_456_789 + rng.integers(0, 10**12, size=n)
    stamps[0], stamps[1] = 0, -1_500_000_001
    path = tmp_path / "traj.tum"
    write_tum(path, stamps, T)
    text = path.read_text().splitlines()
    assert text[0].startswith("#")
    assert text[3].split()[0] == f"{stamps[2] // 10**9}.{stamps[2] % 10**9:09d}"
    assert text[2].split()[0] == "-1.500000001"
    s2, T2 = read_tum(path)
    assert s2.dtype == np.int64
    np.testing.assert_array_equal(s2, stamps)
    np.testing.assert_allclose(T2[:, :3, :3], R, atol=1e-9)
    np.testing.assert_array_equal(T2[:, :3, 3], T[:, :3, 3])   # shortest repr is exact
    np.testing.assert_array_equal(T2[:, 3], np.tile([0, 0, 0, 1.0], (n, 1)))


def test_read_tum_tolerates_real_world_files(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text(
        "# ground truth trajectory\n"
        "# timestamp tx ty tz qx qy qz qw\n"
        "\n"
        "1341847980.7229 1.0 2.0 3.0 0 0 0 2\n"            # short fraction, unnormalised quat
        "1341847981.1234567894,0,0,0,0,0,0,1\n"             # comma-separated, 10 decimals
        "1341847982\t0 0 0 1 0 0 0\n")                      # no fraction, tab, 180 deg about x
    s, T = read_tum(path)
    np.testing.assert_array_equal(s, [1341847980722900000, 1341847981123456789,
                                      1341847982000000000])
    np.testing.assert_allclose(T[0, :3, :3], np.eye(3), atol=1e-15)
    np.testing.assert_array_equal(T[0, :3, 3], [1, 2, 3])
    np.testing.assert_allclose(T[2, :3, :3], np.diag([1.0, -1, -1]), atol=1e-15)


def test_read_tum_rejects_bad_lines(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1.0 0 0 0 0 0 1\n")
    with pytest.raises(ValueError, match="8 fields"):
        read_tum(path)
    path.write_text("abc 0 0 0 0 0 0 1\n")
    with pytest.raises(ValueError, match="timestamp"):
        read_tum(path)


def test_read_tum_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing\n")
    s, T = read_tum(path)
    assert s.shape == (0,) and T.shape == (0, 4, 4)


def _random_cloud(n, seed=3):
    rng = np.random.default_rng(seed)
    return Cloud(xyz=rng.normal(size=(n, 3)).astype(np.float32),
                 rgb=rng.integers(0, 2**24, size=n).astype(np.uint32),
                 dynamic=rng.random(n).astype(np.float32),
                 velocity=rng.normal(size=(n, 3)).astype(np.float32))


def test_ply_round_trip_is_exact(tmp_path):
    cloud = _random_cloud(5000)
    path = tmp_path / "cloud.ply"
    write_ply(path, cloud)
    with open(path, "rb") as f:
        header = read_ply_header(f)
    assert header.format == "binary_little_endian"
    vertex = header.element("vertex")
    assert vertex.count == 5000
    assert [p[0] for p in vertex.properties] == ["x", "y", "z", "red", "green", "blue",
                                                 "dynamic", "vx", "vy", "vz"]
    assert dict(vertex.properties)["red"] == "u1"
    # Packed rows: 3 floats + 3 bytes + 4 floats = 31 bytes each, nothing else after.
    assert path.stat().st_size == header.data_offset + 5000 * 31
    back = read_ply(path)
    np.testing.assert_array_equal(back.xyz, cloud.xyz)
    np.testing.assert_array_equal(back.rgb, cloud.rgb)
    np.testing.assert_array_equal(back.dynamic, cloud.dynamic)
    np.testing.assert_array_equal(back.velocity, cloud.velocity)
    assert back.xyz.dtype == np.float32 and back.rgb.dtype == np.uint32


def test_ply_empty_cloud(tmp_path):
    path = tmp_path / "empty.ply"
    write_ply(path, Cloud.empty())
    assert len(read_ply(path)) == 0


def test_read_ascii_ply_with_packed_rgb_and_other_elements(tmp_path):
    path = tmp_path / "ascii.ply"
    path.write_text(
        "ply\nformat ascii 1.0\ncomment made by hand\n"
        "element camera 1\nproperty float fx\n"
        "element vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
        "property uint rgb\n"
        "element face 1\nproperty list uchar int vertex_indices\n"
        "end_header\n"
        "500\n"
        "1 2 3 16711935\n"          # 0xFF00FF
        "4 5 6 65280\n"             # 0x00FF00
        "3 0 1 1\n")
    c = read_ply(path)
    np.testing.assert_array_equal(c.xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(c.rgb, [0xFF00FF, 0x00FF00])
    np.testing.assert_array_equal(c.dynamic, [0, 0])
    np.testing.assert_array_equal(c.velocity, np.zeros((2, 3)))


def test_read_big_endian_ply_with_pcl_float_rgb(tmp_path):
    rgb = np.array([0x123456, 0xABCDEF], np.uint32)
    data = np.zeros(2, dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("rgb", ">f4")])
    data["x"] = [1.5, -2.0]
    data["rgb"] = rgb.view(np.float32)         # PCL stores colour as a float bit pattern
    path = tmp_path / "be.ply"
    with open(path, "wb") as f:
        f.write(b"ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty float x\n"
                b"property float y\nproperty float z\nproperty float rgb\nend_header\n")
        f.write(data.tobytes())
    c = read_ply(path)
    np.testing.assert_array_equal(c.xyz[:, 0], [1.5, -2.0])
    np.testing.assert_array_equal(c.rgb, rgb)


def test_read_ply_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.ply"
    path.write_bytes(b"PLY?\n")
    with pytest.raises(ValueError, match="magic"):
        read_ply(path)
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\n"
                     b"property float x\nproperty float y\nproperty float z\nend_header\n"
                     + bytes(12))
    with pytest.raises(ValueError, match="truncated"):
        read_ply(path)
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n")
    with pytest.raises(ValueError, match="end_header"):
        read_ply(path)
