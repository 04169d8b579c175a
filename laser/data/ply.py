"""Point clouds as PLY files (``plyfile``): nerfstudio's ``sparse_pc.ply``, the export tool's clouds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from laser.errors import DataError


def read_points(path: Path) -> np.ndarray:
    """The ``x y z`` of a PLY's vertices: ``[P, 3]`` float64."""
    if not path.is_file():
        raise DataError(path, "point cloud named by ply_file_path not found")
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except Exception as err:               # plyfile raises several types for a malformed file
        raise DataError(path, f"cannot read the point cloud ({type(err).__name__}: {err})") from err
    return np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=-1).astype(np.float64)


def write_ply(path: Path, columns: dict[str, np.ndarray], comments: list[str]) -> None:
    """A binary PLY of one ``vertex`` element from equal-length columns, written atomically."""
    vertex = np.empty(len(next(iter(columns.values()))), dtype=[(k, v.dtype) for k, v in columns.items()])
    for key, value in columns.items():
        vertex[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    PlyData([PlyElement.describe(vertex, "vertex")], comments=comments).write(str(partial))
    os.replace(partial, path)
