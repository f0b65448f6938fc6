"""A crash between setting the last checkpoint aside and renaming the new one in leaves the last one to resume.

    python -m pytest tests/distributed/test_checkpoint_swap.py
"""

from laffi.distributed.checkpoint import recover_checkpoint, restore_carried, set_aside


def test_the_checkpoint_set_aside_is_put_back(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    set_aside(checkpoint).mkdir()
    (set_aside(checkpoint) / "step.json").write_text('{"step": 2, "processes": 1}')
    recover_checkpoint(checkpoint)
    assert (checkpoint / "step.json").exists() and not set_aside(checkpoint).exists()
    recover_checkpoint(checkpoint)  # nothing set aside: left as it is
    assert (checkpoint / "step.json").exists()


def test_a_carried_folder_replaces_what_was_written_after_the_checkpoint(tmp_path):
    checkpoint, best = tmp_path / "checkpoint", tmp_path / "best"
    (checkpoint / "carried").mkdir(parents=True)
    (checkpoint / "carried" / "weights").write_text("step 2")
    best.mkdir()
    (best / "weights").write_text("step 3, trained again after the crash")
    restore_carried(checkpoint, best)
    assert (best / "weights").read_text() == "step 2"
    restore_carried(None, best)  # no checkpoint: nothing of the crashed run is kept
    assert not best.exists()
