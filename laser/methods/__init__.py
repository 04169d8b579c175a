"""Training stages: stage-1 reconstruction, and the stage-2 segmentation methods (Laser, 3D-OVS, LERF), each a
composition of parts from ``laser.modules`` with its supervision (``supervision``) on the shared stage-2 base
(``segmentation``: the step, the schedule, evaluation, checkpoints).

A stage exposes ``name``, ``n_iters``, ``train_step(step) -> metrics``, ``evaluate(out_dir, extra) -> metrics``,
``identity() -> dict`` (what a checkpoint must match), ``state_dict()`` and ``load_state_dict()``; the loop in
``laser.training.loop`` knows nothing else about it.
"""
