import pytest

from laser.training.loggers import Logger, WandbLogger


def test_null_logger_accepts_everything():
    logger = Logger(run_dir="x", run_config={"a": 1})
    logger.log({"loss": 1.0}, 0)
    logger.log_images({}, 0)
    logger.finish()


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = WandbLogger(project="laser-test", run_dir=str(tmp_path), mode="offline", run_config={"seed": 1})
    logger.log({"reconstruction/loss": 0.5}, 0)
    logger.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "wandb_id.txt").read_text()
    assert run_id
