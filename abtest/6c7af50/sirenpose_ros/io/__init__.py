"""File formats for trajectories (TUM) and point clouds (PLY). ROS-free."""
from sirenpose_ros.io.ply import read_ply, read_ply_header, write_ply
from sirenpose_ros.io.tum import matrix_to_quat, quat_to_matrix, read_tum, write_tum

__all__ = ["read_ply", "read_ply_header", "write_ply",
           "matrix_to_quat", "quat_to_matrix", "read_tum", "write_tum"]
