"""Train one scene: stage 1 fits a radiance field to the photos; stage 2 distils language features into it.

    python train.py scene=bed                    # a 3D-OVS scene (data/bed)
    python train.py                              # the synthetic benchmark, generated on first use
    python train.py -m field=tensorf,hashgrid    # a Hydra sweep, one run folder per job

Runs resume from their last checkpoint in the run folder (``runs/<scene>`` by default). The run is
:func:`laser.training.loop.train`; its parts are built by :mod:`laser.training.build`.
"""

from __future__ import annotations

import json
import sys

import laser  # noqa: F401  (makes torchvision importable on CPU torch before anything imports it)
import hydra
from omegaconf import DictConfig

from laser.errors import LaserError
from laser.training.loop import train


@hydra.main(version_base=None, config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        result = train(cfg)
    except LaserError as err:          # a message that says what to do needs no traceback
        sys.exit(f"error: {err}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
