"""Running a training: the composition root (``build``: every stage from its config), the loop and a whole run
(``loop``), checkpoints, loggers, run set-up, the shared stage-1 store, time and memory."""
