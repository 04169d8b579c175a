"""laser.video: RGB | segmentation | relevancy along a camera path, as mp4."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from laser.video import VideoOptions, video

REPO = Path(__file__).resolve().parents[1]
iio = pytest.importorskip("imageio.v3")
pytest.importorskip("imageio_ffmpeg")


def test_the_video_has_its_frames_side_by_side(trained_run, tmp_path):
    run = Path(shutil.copytree(trained_run(), tmp_path / "run"))
    out = tmp_path / "videos" / "spiral.mp4"
    result = video(VideoOptions(run=str(run), text="red apple;white wall", frames=6, fps=6, scale=1.0,
                                out=str(out), device="cpu"))
    assert result["path"] == "spiral" and result["frames"] == 6 and result["relevancy"] == "red apple"
    frames = iio.imread(out)
    assert frames.shape[0] == 6
    h, w = result["frame_size"]
    assert frames.shape[2] >= 3 * w and frames.shape[1] >= h                  # three panels and the legend
    assert not np.array_equal(frames[0], frames[3])                           # the camera moves
    assert not list(out.parent.glob(".*partial*"))                            # the temporary file was renamed


def test_the_command_orbits_and_refuses_a_bad_path(trained_run, tmp_path):
    run = trained_run()
    out = tmp_path / "orbit.mp4"
    done = subprocess.run([sys.executable, "-m", "laser.video", f"run={run}", "path=orbit", "frames=3",
                           f"out={out}", "scale=0.5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["path"] == "orbit" and iio.imread(out).shape[0] == 3
    done = subprocess.run([sys.executable, "-m", "laser.video", f"run={run}", "path=zigzag", f"out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "error: path: must be auto, spiral or orbit" in done.stderr
