"""laser.export: the point cloud of a trained run as PLY."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from laser.export import ExportOptions, export, property_names, surface_points
from laser.query import SceneQuery

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(trained_run, tmp_path):
    return Path(shutil.copytree(trained_run(), tmp_path / "run"))


def test_points_carry_colour_class_and_relevancy_of_their_pixels(run, tmp_path):
    out = tmp_path / "cloud" / "scene.ply"
    result = export(ExportOptions(run=str(run), out=str(out), text=["red apple", "red apple"], per_class=True,
                                  views=[0, 2], stride=2, min_opacity=0.0, device="cpu"))
    ply = PlyData.read(str(out))
    vertex = ply["vertex"].data
    query = SceneQuery(run, device="cpu", stride=2)
    classes = query.classes
    assert len(vertex) == result["points"] == 2 * 24 * 32                        # every ray of both views
    assert vertex.dtype.names[:7] == ("x", "y", "z", "red", "green", "blue", "class")
    assert "relevancy_red_apple" in vertex.dtype.names and "relevancy_red_apple_2" in vertex.dtype.names
    assert [c for c in ply.comments if c.startswith("class ")] == [f"class {i} = {n}" for i, n in enumerate(classes)]
    # The first view's points are its pixels: their colour, class and scores are the 2D query's.
    first = vertex[:24 * 32]
    scores = query.scores(0, [*classes, "red apple"]).reshape(-1, len(classes) + 1)
    assert np.array_equal(first["class"], scores[:, :-1].argmax(-1).numpy())
    assert np.allclose(first["relevancy_red_apple"], scores[:, -1].numpy(), atol=1e-6)
    assert np.allclose(first["score_" + classes[0].replace(" ", "_")], scores[:, 0].numpy(), atol=1e-6)
    rgb = np.round(query.rgb(0).reshape(-1, 3).clamp(0, 1).numpy() * 255)
    assert np.abs(np.stack([first["red"], first["green"], first["blue"]], -1) - rgb).max() <= 1
    # At the ray's expected depth, in world coordinates.
    xyz, opacity = surface_points(query, 0)
    assert np.allclose(np.stack([first["x"], first["y"], first["z"]], -1), xyz.numpy(), atol=1e-5)
    assert torch.isfinite(xyz).all() and opacity.shape == (24 * 32,)
    # One file per class that has points, holding exactly that class's points.
    for name, count in result["points_per_class"].items():
        if count:
            part = PlyData.read(result["files"][name])["vertex"].data
            assert len(part) == count and (part["class"] == classes.index(name)).all()
        else:
            assert name not in result["files"]
    assert sum(result["points_per_class"].values()) == len(vertex)


def test_opacity_filter_and_the_command(run, tmp_path):
    out = tmp_path / "scene.ply"
    done = subprocess.run([sys.executable, "-m", "laser.export", f"run={run}", f"out={out}", "min_opacity=1.01",
                           "views=[0]"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["points"] == 0       # no ray is more than opaque
    assert len(PlyData.read(str(out))["vertex"].data) == 0
    done = subprocess.run([sys.executable, "-m", "laser.export", f"run={run}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and "error: out: is required" in done.stderr


def test_property_names_are_identifiers_and_unique():
    assert property_names(["red apple", "Red Apple!", "x"], "relevancy") == [
        "relevancy_red_apple", "relevancy_red_apple_2", "relevancy_x"]


def test_open3d_reads_the_cloud(run, tmp_path):
    o3d = pytest.importorskip("open3d")
    out = tmp_path / "scene.ply"
    result = export(ExportOptions(run=str(run), out=str(out), views=[0], stride=4, min_opacity=0.0, device="cpu"))
    cloud = o3d.io.read_point_cloud(str(out))
    assert len(cloud.points) == result["points"] and cloud.has_colors()
