"""What the training loop in ``train.py`` needs: checkpoints, loggers, run set-up."""
