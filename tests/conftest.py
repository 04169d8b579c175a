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
