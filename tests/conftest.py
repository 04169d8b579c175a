import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

FERN = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff_fern"


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """A small synthetic scene in the 3D-OVS layout (64x48, 8 views, 2 annotated), shared by the session.
    Tests must not modify it: copy it first (``copy_scene``)."""
    from laser.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("tiny") / "tiny", seed=0, width=64, height=48, views=8, annotated=2)


TINY_TRAINING = ["logger=none", "reconstruction.n_iters=6", "reconstruction.batch_size=64",
                 "reconstruction.n_voxels_init=4096", "reconstruction.n_voxels_final=13824",
                 "reconstruction.upsample_steps=[2,4]", "reconstruction.alpha_mask_steps=[3]",
                 "reconstruction.max_samples=16", "scene.holdout_every=4", "scene.generate=null",
                 "model.rendering.n_samples=16"]
TINY_STAGE2 = {"laser": ["model.schedule.n_iters=3", "model.supervision.patch_size=32",
                         "model.supervision.patch_num=2"],
               "lerf": ["model=lerf", "model.schedule.n_iters=3", "model.supervision.batch_size=64",
                        "model.supervision.use_dino=false", "model.language_field.n_levels=4",
                        "model.language_field.features_per_level=2", "model.language_field.log2_hashmap_size=10",
                        "model.language_field.hidden_dim=32", "model.language_field.n_hidden=2",
                        "model.query_scales=3", "model.min_views=1"]}


@pytest.fixture(scope="session")
def trained_run(tiny_scene, tmp_path_factory):
    """``trained_run(method)``: the folder of a tiny run of ``method`` (laser or lerf) trained on the tiny scene,
    both stages, as ``train.py`` writes it (``.hydra/config.yaml``, ``checkpoints/``). Trained once per session;
    tests must not modify it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from laser.training.loop import train

    root = tmp_path_factory.mktemp("trained")
    runs = {}

    def trained(method: str = "laser") -> Path:
        if method not in runs:
            conf = Path(__file__).resolve().parents[1] / "conf"
            with initialize_config_dir(config_dir=str(conf), version_base=None):
                cfg = compose("train", overrides=["scene=synthetic", f"scene.root={tiny_scene}",
                                                  f"stage_store={root / 'stages'}", *TINY_TRAINING,
                                                  *TINY_STAGE2[method]])
            run_dir = root / method
            train(cfg, run_dir)
            (run_dir / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
            runs[method] = run_dir
        return runs[method]

    return trained
