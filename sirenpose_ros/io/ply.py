"""PLY point clouds: write a :class:`Cloud` as binary little-endian PLY, read it (and common
variants) back.

Vertex properties written: ``x y z`` (float), ``red green blue`` (uchar: the names MeshLab,
CloudCompare and Open3D use for colour), ``dynamic`` (float, probability of being dynamic) and
``vx vy vz`` (float, velocity in world units/s; NaN = unknown). Readers ignore properties they
do not know, so the extra ones are harmless.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from os import PathLike
from typing import BinaryIO

import numpy as np

from sirenpose_ros.core.types import Cloud

# PLY scalar type names (both the classic and the sized spellings) -> NumPy type without order.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "<"}
_MAX_HEADER_LINES = 10_000   # a real header is a few dozen lines; stop on garbage

# What write_ply emits, packed (no padding), little-endian.
_VERTEX_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
    ("red", "u1"), ("green", "u1"), ("blue", "u1"),
    ("dynamic", "<f4"), ("vx", "<f4"), ("vy", "<f4"), ("vz", "<f4"),
])
_NUMPY_TO_PLY = {"f4": "float", "f8": "double", "u1": "uchar", "i1": "char", "u2": "ushort",
                 "i2": "short", "u4": "uint", "i4": "int"}


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[tuple[str, str]]        # (name, numpy type code without byte order)
    has_list: bool = False                   # a list property makes rows variable-size


@dataclass
class PlyHeader:
    format: str                              # 'ascii', 'binary_little_endian', ...
    elements: list[PlyElement]
    comments: list[str]
    data_offset: int                         # byte offset of the first data byte

    def element(self, name: str) -> PlyElement | None:
        return next((e for e in self.elements if e.name == name), None)


def read_ply_header(f: BinaryIO) -> PlyHeader:
    """Parse a PLY header from a binary stream positioned at the file start.

    Leaves the stream at the first data byte. Raises ValueError on anything that is not a
    well-formed PLY header.
    """
    magic = f.readline().rstrip(b"\r\n")
    if magic != b"ply":
        raise ValueError("not a PLY file (missing 'ply' magic)")
    fmt = None
    elements: list[PlyElement] = []
    comments: list[str] = []
    for _ in range(_MAX_HEADER_LINES):
        raw = f.readline()
        if not raw:
            raise ValueError("PLY header ends before 'end_header'")
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError("PLY header is not ASCII") from None
        words = line.split()
        if not words:
            continue
        key = words[0]
        if key == "end_header":
            break
        if key in ("comment", "obj_info"):
            comments.append(line[len(key):].strip())
        elif key == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise ValueError(f"unsupported PLY format line: {line!r}")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise ValueError(f"bad PLY element line: {line!r}")
            elements.append(PlyElement(words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise ValueError(f"PLY property before any element: {line!r}")
            if len(words) == 5 and words[1] == "list":
                elements[-1].has_list = True
                elements[-1].properties.append((words[4], "list"))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise ValueError(f"bad PLY property line: {line!r}")
        else:
            raise ValueError(f"unknown PLY header keyword: {line!r}")
    else:
        raise ValueError("PLY header too long (no 'end_header')")
    if fmt is None:
        raise ValueError("PLY header has no 'format' line")
    return PlyHeader(fmt, elements, comments, f.tell())


def _element_dtype(el: PlyElement, order: str) -> np.dtype:
    if el.has_list:
        raise ValueError(f"PLY element '{el.name}' has list properties; only fixed-size "
                         "elements before/in 'vertex' are supported")
    return np.dtype([(name, order + code) for name, code in el.properties])


def write_ply(path: str | PathLike, cloud: Cloud) -> None:
    """Write ``cloud`` as binary little-endian PLY (one structured-array write, no loops)."""
    n = len(cloud)
    rgb = np.asarray(cloud.rgb, dtype=np.uint32).reshape(n)
    data = np.empty(n, dtype=_VERTEX_DTYPE)
    xyz = np.asarray(cloud.xyz, dtype=np.float32).reshape(n, 3)
    vel = np.asarray(cloud.velocity, dtype=np.float32).reshape(n, 3)
    data["x"], data["y"], data["z"] = xyz.T
    data["red"] = (rgb >> 16) & 0xFF
    data["green"] = (rgb >> 8) & 0xFF
    data["blue"] = rgb & 0xFF
    data["dynamic"] = np.asarray(cloud.dynamic, dtype=np.float32).reshape(n)
    data["vx"], data["vy"], data["vz"] = vel.T
    props = "".join(f"property {_NUMPY_TO_PLY[_VERTEX_DTYPE[name].str[1:]]} {name}\n"
                    for name in _VERTEX_DTYPE.names)
    header = ("ply\nformat binary_little_endian 1.0\n"
              "comment sirenpose_ros cloud: world frame (optical: x right, y down, z forward)\n"
              f"element vertex {n}\n{props}end_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.flush()            # tofile writes through the file descriptor, after the header
        data.tofile(f)


def _read_vertices(f: BinaryIO, header: PlyHeader) -> np.ndarray:
    order = _FORMATS[header.format]
    vertex = header.element("vertex")
    if vertex is None:
        raise ValueError("PLY file has no 'vertex' element")
    if header.format == "ascii":
        text = io.StringIO(f.read().decode("ascii"))
        skip = 0
        for el in header.elements:             # one text line per item in ASCII PLY
            if el is vertex:
                break
            skip += el.count
        dtype = _element_dtype(vertex, order)
        if vertex.count == 0:
            return np.empty(0, dtype)
        data = np.loadtxt(text, dtype=dtype, skiprows=skip, max_rows=vertex.count, ndmin=1)
        if data.shape[0] != vertex.count:
            raise ValueError(f"PLY has {data.shape[0]} vertex lines, header says {vertex.count}")
        return data
    for el in header.elements:                  # skip fixed-size elements stored before 'vertex'
        if el is vertex:
            break
        f.seek(el.count * _element_dtype(el, order).itemsize, io.SEEK_CUR)
    dtype = _element_dtype(vertex, order)
    buf = f.read(vertex.count * dtype.itemsize)
    if len(buf) != vertex.count * dtype.itemsize:
        raise ValueError("PLY file is truncated: fewer vertex bytes than the header declares")
    return np.frombuffer(buf, dtype=dtype)


def read_ply(path: str | PathLike) -> Cloud:
    """Read a PLY point cloud into a :class:`Cloud`.

    Needs ``x y z``; colour from ``red green blue`` or a packed ``rgb``/``rgba`` (uint32 or
    float32 bit pattern, as PCL writes it); ``dynamic`` and ``vx vy vz`` default to zero when
    absent. Other properties and elements are ignored.
    """
    with open(path, "rb") as f:
        header = read_ply_header(f)
        v = _read_vertices(f, header)
    names = set(v.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise ValueError("PLY vertex element lacks x, y, z")
    n = v.shape[0]
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    if {"red", "green", "blue"} <= names:
        rgb = ((v["red"].astype(np.uint32) << 16) | (v["green"].astype(np.uint32) << 8)
               | v["blue"].astype(np.uint32))
    elif "rgb" in names or "rgba" in names:
        packed = v["rgb" if "rgb" in names else "rgba"]
        if packed.dtype.itemsize != 4:
            raise ValueError("packed PLY colour must be a 4-byte property")
        # Native byte order first, then reinterpret the 4 bytes (PCL stores a float32 bit
        # pattern, others a uint32) as 0x00RRGGBB.
        native = packed.astype(packed.dtype.newbyteorder("="))
        rgb = native.view(np.uint32) & np.uint32(0xFFFFFF)
    else:
        rgb = np.zeros(n, np.uint32)
    dynamic = v["dynamic"].astype(np.float32) if "dynamic" in names else np.zeros(n, np.float32)
    if {"vx", "vy", "vz"} <= names:
        vel = np.stack([v["vx"], v["vy"], v["vz"]], axis=1).astype(np.float32)
    else:
        vel = np.zeros((n, 3), np.float32)
    return Cloud(xyz=xyz, rgb=rgb.astype(np.uint32), dynamic=dynamic, velocity=vel)
