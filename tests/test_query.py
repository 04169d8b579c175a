"""laser.query: any phrase against a trained run, its per-view cache, and the command."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laser.errors import CheckpointError, ConfigError
from laser.query import SceneQuery, segmentation

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A writable copy of a trained run (queries write their cache into the run folder)."""
    def copy(method="laser"):
        return Path(shutil.copytree(trained_run(method), tmp_path / method))
    return copy


@pytest.mark.parametrize("method", ["laser", "lerf"])
def test_the_class_prompts_as_phrases_give_the_evaluation_scores(run_copy, method):
    query = SceneQuery(run_copy(method), device="cpu")
    view = query.views()[0]
    with torch.no_grad():
        expected, rgb = query.stage.class_scores(view)
    scores = query.scores(view, query.classes)
    assert scores.shape == expected.shape and torch.allclose(scores, expected, atol=1e-6)
    assert torch.allclose(query.rgb(view), rgb)
    # One phrase alone scores as it does among the others (LERF's scale is chosen per phrase).
    assert torch.allclose(query.scores(view, [query.classes[1]])[..., 0], expected[..., 1], atol=1e-6)
    other = query.scores(view, ["something to drink from", query.classes[0]])
    assert other.shape[-1] == 2 and not torch.allclose(other[..., 0], other[..., 1])


def test_a_view_is_rendered_once_then_read_from_its_cache_until_the_checkpoint_changes(run_copy, monkeypatch):
    run = run_copy()
    first = SceneQuery(run, device="cpu")
    view = first.views()[0]
    scores = first.scores(view, ["red apple"])
    assert (run / "query_cache" / "laser" / f"view_{view:03d}_stride1.pt").is_file()

    second = SceneQuery(run, device="cpu")
    monkeypatch.setattr(second.stage, "render_view", lambda rays: pytest.fail("rendered although cached"))
    assert torch.equal(second.scores(view, ["red apple"]), scores)

    checkpoint = run / "checkpoints" / "laser.pt"                      # a re-trained or resumed run rewrites it
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    third = SceneQuery(run, device="cpu")
    rendered = []
    original = third.stage.render_view
    monkeypatch.setattr(third.stage, "render_view", lambda rays: rendered.append(1) or original(rays))
    assert torch.allclose(third.scores(view, ["red apple"]), scores) and rendered == [1]


def test_a_torn_cache_file_is_rendered_again(run_copy):
    run = run_copy()
    query = SceneQuery(run, device="cpu")
    view = query.views()[0]
    scores = query.scores(view, ["mug"])
    path = run / "query_cache" / "laser" / f"view_{view:03d}_stride1.pt"
    path.write_bytes(path.read_bytes()[:100])
    again = SceneQuery(run, device="cpu")
    assert torch.equal(again.scores(view, ["mug"]), scores) and path.stat().st_size > 100


def test_a_threshold_leaves_the_pixels_of_low_relevancy_without_a_phrase():
    scores = torch.tensor([[[0.0, 1.0], [0.2, 0.1]], [[0.9, 0.0], [0.5, 0.45]]])     # [2, 2, 2]
    assert segmentation(scores).tolist() == [[1, 0], [0, 0]]
    # Normalised over the view: phrase 0 is (0, .22, 1, .56), phrase 1 is (1, .1, 0, .45).
    assert segmentation(scores, threshold=0.5).tolist() == [[1, -1], [0, 0]]


def test_bad_requests_are_refused_with_the_option_named(run_copy, trained_run, tmp_path):
    query = SceneQuery(trained_run(), device="cpu", cache=False)
    with pytest.raises(ConfigError, match="views"):
        query.views([99])
    with pytest.raises(ConfigError, match="text"):
        query.embed([])
    with pytest.raises(ConfigError, match="text"):
        query.embed(["red apple", " "])
    with pytest.raises(CheckpointError, match="not a run folder"):
        SceneQuery(tmp_path / "nothing")
    stage1_only = run_copy()
    (stage1_only / "checkpoints" / "laser.pt").unlink()
    with pytest.raises(CheckpointError, match="stage 2 has not been trained"):
        SceneQuery(stage1_only)


def test_the_command_writes_maps_and_segmentations_and_prints_its_timings(run_copy, tmp_path):
    run = run_copy()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "laser.query", f"run={run}", 'text=["red apple", "something to drink from"]',
               "views=[0,2]", f"out={out}", "threshold=0.3"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["phrases"] == ["red apple", "something to drink from"] and result["views"] == [0, 2]
    assert result["ms_per_view"]["first"] > 0 and result["ms_per_view"]["later"] > 0
    assert result["ms_per_view"]["first"] >= result["render_ms_per_view"]
    assert {p.name for p in (out / "relevancy").iterdir()} == {
        "000_red_apple.png", "000_something_to_drink_from.png", "002_red_apple.png",
        "002_something_to_drink_from.png"}
    assert (out / "segmentation_000.png").is_file() and json.loads((out / "query.json").read_text()) == result

    done = subprocess.run([sys.executable, "-m", "laser.query", f"run={run}", "txt=mug"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.startswith("error: txt: unknown option")
    assert "Traceback" not in done.stderr
