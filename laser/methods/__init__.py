"""Training stages: stage-1 reconstruction, and the stage-2 segmentation methods (Laser, 3D-OVS, LERF).

A stage exposes ``name``, ``n_iters``, ``train_step(step) -> metrics``, ``evaluate(out_dir) -> metrics``,
``identity() -> dict`` (what a checkpoint must match), ``state_dict()`` and ``load_state_dict()``; the loop in
``train.py`` knows nothing else about it.
"""
