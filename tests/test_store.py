"""Stage results shared between runs (laser/training/store.py)."""

from laser.training.store import StageStore, digest

IDENTITY = {"stage": "reconstruction", "scene": "bed", "n_iters": 10}


def make_run(root):
    checkpoint = root / "checkpoints" / "reconstruction.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    outputs = root / "reconstruction" / "test"
    (outputs / "sub").mkdir(parents=True)
    (outputs / "metrics.json").write_text("{}")
    (outputs / "sub" / "rgb_000.png").write_bytes(b"png")
    return checkpoint, outputs


def test_digest_depends_on_identity_and_data():
    assert digest(IDENTITY, "/data/bed") == digest(dict(IDENTITY), "/data/bed")
    assert digest(IDENTITY, "/data/bed") != digest({**IDENTITY, "n_iters": 11}, "/data/bed")
    assert digest(IDENTITY, "/data/bed") != digest(IDENTITY, "/other/bed")


def test_published_stage_is_fetched_by_another_run(tmp_path):
    store = StageStore(tmp_path / "store")
    checkpoint, outputs = make_run(tmp_path / "a")
    key = ("reconstruction", IDENTITY, "/data/bed")
    other_checkpoint, other_outputs = tmp_path / "b/checkpoints/reconstruction.pt", tmp_path / "b/reconstruction/test"
    assert not store.fetch(other_checkpoint, other_outputs, *key)          # nothing published yet
    store.publish(checkpoint, outputs, *key)
    assert store.fetch(other_checkpoint, other_outputs, *key)
    assert other_checkpoint.read_bytes() == b"weights"
    assert (other_outputs / "sub" / "rgb_000.png").read_bytes() == b"png"
    assert (other_outputs / "metrics.json").is_file()
    assert not list(tmp_path.rglob("*.tmp"))                               # no temporary file left behind


def test_fetch_never_replaces_a_runs_own_checkpoint(tmp_path):
    store = StageStore(tmp_path / "store")
    checkpoint, outputs = make_run(tmp_path / "a")
    store.publish(checkpoint, outputs, "reconstruction", IDENTITY, "/data/bed")
    mine, mine_outputs = make_run(tmp_path / "b")
    mine.write_bytes(b"my own")
    assert not store.fetch(mine, mine_outputs, "reconstruction", IDENTITY, "/data/bed")
    assert mine.read_bytes() == b"my own"


def test_other_identity_is_not_fetched_and_disabled_store_does_nothing(tmp_path):
    store = StageStore(tmp_path / "store")
    checkpoint, outputs = make_run(tmp_path / "a")
    store.publish(checkpoint, outputs, "reconstruction", IDENTITY, "/data/bed")
    target = tmp_path / "b/checkpoints/reconstruction.pt"
    assert not store.fetch(target, tmp_path / "b/out", "reconstruction", {**IDENTITY, "n_iters": 11}, "/data/bed")
    disabled = StageStore(None)
    disabled.publish(checkpoint, outputs, "reconstruction", IDENTITY, "/data/bed")
    assert not disabled.fetch(target, tmp_path / "b/out", "reconstruction", IDENTITY, "/data/bed")
    assert not target.exists()
