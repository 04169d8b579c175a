"""The training loop and train.py / eval.py: end to end, resume equivalence, refusing foreign checkpoints."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from laser.data.scenes import load_scene
from laser.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from laser.training.build import build_reconstruction
from laser.training.loop import fit
from laser.training.run import setup_run

REPO = Path(__file__).resolve().parents[1]
TINY = ["logger=none", "reconstruction.n_iters=6", "reconstruction.batch_size=64", "reconstruction.n_voxels_init=4096",
        "reconstruction.n_voxels_final=13824", "reconstruction.upsample_steps=[2,4]",
        "reconstruction.alpha_mask_steps=[3]", "reconstruction.max_samples=16", "checkpoint_every=2",
        "scene.holdout_every=4", "scene.generate=null",
        "model.schedule.n_iters=2", "model.supervision.patch_size=32", "model.supervision.patch_num=2",
        "model.rendering.n_samples=16"]


def config(scene_root: Path, *extra: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("train", overrides=["scene=synthetic", f"scene.root={scene_root}", *TINY, *extra])


def run_stage(cfg, run_dir: Path, interrupt_at: int | None = None):
    run = setup_run(cfg, run_dir)
    stage, identity = build_reconstruction(cfg, run.device)
    if interrupt_at is not None:
        step_fn = stage.train_step

        def train_step(step):
            if step == interrupt_at:
                raise KeyboardInterrupt
            return step_fn(step)
        stage.train_step = train_step
    metrics = fit(stage, run, cfg, identity, "stage1")
    return stage, metrics


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny_scene, tmp_path):
    cfg = config(tiny_scene)
    straight, _ = run_stage(cfg, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, tmp_path / "b", interrupt_at=5)       # killed after the checkpoint of step 4
    assert torch.load(tmp_path / "b/checkpoints/reconstruction.pt", weights_only=False)["step"] == 4
    torch.manual_seed(123)                                   # a new process would start from other RNG states
    resumed, _ = run_stage(cfg, tmp_path / "b")
    a, b = straight.field.state_dict(), resumed.field.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight.field.grid_resolution() == resumed.field.grid_resolution()


def test_incompatible_checkpoint_is_refused_and_kept(tiny_scene, tmp_path):
    run_stage(config(tiny_scene), tmp_path / "run")
    path = tmp_path / "run/checkpoints/reconstruction.pt"
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="density_components"):
        run_stage(config(tiny_scene, "field.density_components=[8,2,2]"), tmp_path / "run")
    assert path.read_bytes() == before
    with pytest.raises(CheckpointError, match="resume=false"):
        run_stage(config(tiny_scene, "resume=false"), tmp_path / "run")
    assert path.read_bytes() == before


def test_finished_run_is_reused(tiny_scene, tmp_path):
    _, first = run_stage(config(tiny_scene), tmp_path / "run")
    stage, again = run_stage(config(tiny_scene), tmp_path / "run")
    assert again == first


def test_missing_real_scene_says_where_the_data_comes_from(tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["scene=bed", f"scene.root={tmp_path / 'bed'}"])
    with pytest.raises(DataError, match="3D-OVS dataset"):
        load_scene(cfg.scene, cfg.scene.downsample.reconstruction)


def test_train_py_end_to_end(tiny_scene, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    run_dir = tmp_path / "run"
    store = f"stage_store={tmp_path / 'stages'}"
    out = subprocess.run([sys.executable, "train.py", f"scene.root={scene}", *TINY, store, f"hydra.run.dir={run_dir}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reusing" not in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["test_psnr"] > 5 and 0 < result["test_ssim"] <= 1
    assert 0 <= result["miou"] <= 1                        # stage 2 followed stage 1
    assert (run_dir / "checkpoints/reconstruction.pt").is_file()
    renders = run_dir / "reconstruction/test"
    assert {p.name for p in renders.iterdir()} >= {"rgb_000.png", "depth_000.png", "rgb_004.png", "metrics.json"}

    out = subprocess.run([sys.executable, "eval.py", f"run={run_dir}", f"out={tmp_path / 'eval'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.loads((tmp_path / "eval/results.json").read_text())
    assert table[0]["test_psnr"] == pytest.approx(result["test_psnr"], abs=1e-4)
    assert table[0]["miou"] == pytest.approx(result["miou"], abs=1e-6)        # stage 2 rebuilt and re-rendered
    assert list((tmp_path / "eval").glob("*/laser/relevancy/*.png"))
    assert (tmp_path / "eval/results.md").read_text().startswith("| run | scene | step | test_psnr")
    per_query = json.loads((tmp_path / "eval/per_query.json").read_text())       # the second table
    assert per_query[0]["threshold"] == 0.7 and 0 <= per_query[0]["miou"] <= 1

    # Another stage-2 configuration on the same scene takes the published stage 1 instead of training it.
    out = subprocess.run([sys.executable, "train.py", f"scene.root={scene}", *TINY, store, "model.ltqa=null",
                          f"hydra.run.dir={tmp_path / 'run2'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "stage 1: reusing" in out.stdout and "reconstruction:" not in out.stderr   # no stage-1 progress bar
    second = json.loads(out.stdout.strip().splitlines()[-1])
    assert second["test_psnr"] == result["test_psnr"]


def test_eval_py_without_a_trained_run(tmp_path):
    out = subprocess.run([sys.executable, "eval.py", f"run={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "no trained run here" in out.stderr


# --- the step guards its data ------------------------------------------------------------------------------------
def laser_stage(root, run_dir):
    """A tiny stage 1 trained, and its Laser stage 2 built but not trained (6 steps, checkpoints every 3)."""
    from laser.training.build import build_segmentation, prepare_segmentation
    from test_laser_stage import config as laser_config

    cfg = laser_config(root)
    run = setup_run(cfg, run_dir)
    reconstruction, identity = build_reconstruction(cfg, run.device)
    prepared = prepare_segmentation(cfg, reconstruction.scene)
    fit(reconstruction, run, cfg, identity, "stage1")
    return (cfg, run, *build_segmentation(cfg, prepared, reconstruction.field, run.device))


def test_a_non_finite_loss_term_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_scene, tmp_path):
    cfg, run, stage, identity = laser_stage(tiny_scene, tmp_path / "run")
    losses = stage.losses

    def poisoned(batch, outputs, step):
        terms = losses(batch, outputs, step)
        return {**terms, "relevancy": terms["relevancy"] * float("nan")} if step == 4 else terms
    stage.losses = poisoned
    with pytest.raises(NonFiniteError, match=r"step 4: laser stopped: the loss term 'relevancy' is nan; the last good "
                                             r"checkpoint, .*laser.pt \(step 3\), is kept"):
        fit(stage, run, cfg, identity, "stage2")
    path = run.checkpoint_path("laser")
    saved = torch.load(path, weights_only=False)
    assert saved["step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["stage"]["modules"]["head"].values())


def test_a_non_finite_gradient_skips_the_step_on_the_device_and_is_reported(tiny_scene, tmp_path):
    _, _, stage, _ = laser_stage(tiny_scene, tmp_path / "run")                  # joint phase from step 2
    weight = stage.head.net[0].weight
    before = weight.detach().clone()
    hook = weight.register_hook(lambda grad: grad * float("inf"))
    stage.train_step(0)                                              # returns: nothing waits for the device
    assert torch.equal(weight.detach(), before)                      # nothing of the step was applied
    assert stage.optimizer.state[weight]["exp_avg"].abs().max() == 0  # nor to Adam's moments
    hook.remove()
    stage.train_step(1)                                              # later steps go on, the first bad one is kept
    assert not torch.equal(weight.detach(), before)
    with pytest.raises(NonFiniteError, match="step 0: the gradient of head.net.0.weight is not finite"):
        stage.check_finite()
    with pytest.raises(NonFiniteError, match="step 0: the gradient"):
        stage.train_step(2)                                          # the phase change reads the record too


def test_a_non_finite_stage_1_figure_stops_the_run(tiny_scene, tmp_path):
    cfg = config(tiny_scene)
    run = setup_run(cfg, tmp_path / "run")
    stage, identity = build_reconstruction(cfg, run.device)
    stage.train_step = lambda step: {"loss": float("nan") if step == 3 else 0.1}
    with pytest.raises(NonFiniteError, match=r"step 3: reconstruction stopped: 'loss' is nan; the last good "
                                             r"checkpoint, .*reconstruction.pt \(step 2\), is kept"):
        fit(stage, run, cfg, identity, "stage1")


def test_impossible_step_counts_and_mixed_image_sizes_are_refused(tiny_scene, tmp_path):
    with pytest.raises(ConfigError, match="reconstruction.n_iters: a stage needs at least one training step, not 0"):
        build_reconstruction(config(tiny_scene, "reconstruction.n_iters=0"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="reconstruction.eval_chunk: a render call needs at least one ray, not 0"):
        build_reconstruction(config(tiny_scene, "reconstruction.eval_chunk=0"), torch.device("cpu"))
    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    image = sorted((scene / "images").iterdir())[3]
    Image.open(image).resize((60, 48)).save(image)
    with pytest.raises(DataError, match=f"{image.name}: image is 60x48 but the scene's other images are 64x48"):
        load_scene(config(scene).scene, 1)


def test_an_old_layout_stage_2_checkpoint_is_refused_and_kept(tiny_scene, tmp_path):
    from laser.training.loop import restore

    cfg, run, stage, identity = laser_stage(tiny_scene, tmp_path / "run")
    path = run.checkpoint_path("laser")
    old = {"identity": {k: v for k, v in identity.items() if k != "layout"}, "step": 3, "stage": {}, "cost": {}}
    torch.save(old, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="earlier version of laser whose laser checkpoints have another layout"):
        restore(stage, run, identity, resume=True)
    assert path.read_bytes() == before


def test_train_py_prints_an_actionable_error_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "scene=bed", f"scene.root={tmp_path / 'bed'}", "logger=none",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and "scene folder not found" in out.stderr and "3D-OVS" in out.stderr
    assert "Traceback" not in out.stderr and "Error executing job" not in out.stderr


SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")   # calls that wait for a GPU


def count_syncs(monkeypatch, stage) -> list[str]:
    """Patch the tensor methods that read values back to the host; record those called outside the supervision's
    sampling (which runs on the host by design, as a data loader would)."""
    calls, sampling = [], [False]
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if not sampling[0]:
                calls.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    sample = stage.supervision.sample

    def host_sampling(teacher):
        sampling[0] = True
        try:
            return sample(teacher)
        finally:
            sampling[0] = False
    monkeypatch.setattr(stage.supervision, "sample", host_sampling)
    return calls


@pytest.mark.parametrize("method", ["laser", "ovs3d", "lerf"])
def test_a_stage_2_step_reads_nothing_back_from_the_device(tiny_scene, tmp_path, monkeypatch, method):
    from laser.training.build import build_segmentation, prepare_segmentation
    from test_laser_stage import config as laser_config
    from test_regression import LERF, OVS3D

    cfg = laser_config(tiny_scene) if method == "laser" else laser_config(
        tiny_scene, *{"ovs3d": OVS3D, "lerf": LERF}[method], stage2=False)
    run = setup_run(cfg, tmp_path / "run")
    reconstruction, identity = build_reconstruction(cfg, run.device)
    prepared = prepare_segmentation(cfg, reconstruction.scene)
    fit(reconstruction, run, cfg, identity, "stage1")
    stage, _ = build_segmentation(cfg, prepared, reconstruction.field, run.device)
    stage.train_step(0)
    calls = count_syncs(monkeypatch, stage)
    for step in range(1, stage.n_iters):            # both phases, and for Laser the cross phase
        count = len(calls)
        stage.train_step(step)
        if step == stage.schedule.joint_start_iter:  # the phase change reads the guard's record, once per run
            assert calls[count:] == ["__int__"]
            del calls[count:]
    assert calls == []
