"""The run-folder layout: which folders count as checkpoints, under either name, in step order."""

from sdlib.runs import STATE_FILE, checkpoint_name, latest_checkpoint, list_checkpoints, remove_partial_saves


def _checkpoint(root, name, complete=True):
    path = root / "checkpoints" / name
    path.mkdir(parents=True)
    if complete:
        (path / STATE_FILE).write_text("{}")
        (path / "config.json").write_text("{}")
    return path


def test_checkpoints_are_named_as_the_hugging_face_trainer_names_them():
    assert checkpoint_name(8) == "checkpoint-8" and checkpoint_name(120) == "checkpoint-120"


def test_older_step_folders_are_read_in_step_order_beside_new_ones(tmp_path):
    _checkpoint(tmp_path, "step-000004")
    _checkpoint(tmp_path, "step-000008")
    _checkpoint(tmp_path, "checkpoint-12")
    _checkpoint(tmp_path, "checkpoint-100")
    _checkpoint(tmp_path, "checkpoint-16", complete=False)  # a save without its state file does not count
    _checkpoint(tmp_path, "checkpoint-x")
    assert [(s, p.name) for s, p in list_checkpoints(tmp_path)] == [
        (4, "step-000004"), (8, "step-000008"), (12, "checkpoint-12"), (100, "checkpoint-100")]
    assert latest_checkpoint(tmp_path).name == "checkpoint-100"  # by step, not by name


def test_partial_saves_under_either_name_are_removed(tmp_path):
    old = _checkpoint(tmp_path, ".tmp-step-000006-abc", complete=False)
    new = _checkpoint(tmp_path, ".tmp-checkpoint-6-def", complete=False)
    kept = _checkpoint(tmp_path, "checkpoint-4")
    assert sorted(p.name for p in remove_partial_saves(tmp_path)) == [new.name, old.name]
    assert not old.exists() and not new.exists() and kept.exists()
