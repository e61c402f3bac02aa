"""Step outputs are replaced as whole folders: readers see the old one or all of the new one."""

from __future__ import annotations

import pytest

from pipelines.atomic_files import replace_dirs, staged_dir


def _tree(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_staged_dir_swaps_in_the_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "out" / "train"
    with staged_dir(target) as stage:
        (stage / "model.pkl").write_text("v1")
        (stage / "train.json").write_text("{}")
    assert _tree(tmp_path / "out") == {"train/model.pkl": "v1", "train/train.json": "{}"}

    with pytest.raises(RuntimeError, match="evaluate failed"), staged_dir(target) as stage:
        (stage / "model.pkl").write_text("v2")
        raise RuntimeError("evaluate failed")
    assert _tree(tmp_path / "out") == {"train/model.pkl": "v1", "train/train.json": "{}"}

    with staged_dir(target) as stage:  # files of the old folder that the new one lacks are gone
        (stage / "model.pkl").write_text("v3")
    assert _tree(tmp_path / "out") == {"train/model.pkl": "v3"}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["train"]  # no hidden leftovers


def test_replace_dirs_publishes_every_step_of_a_staging_root(tmp_path):
    final, stage = tmp_path / "outputs", tmp_path / "outputs" / ".run-x"
    for name in ("featurize", "train"):
        (final / name).mkdir(parents=True)
        (final / name / "old").write_text("old")
        (stage / name).mkdir(parents=True)
        (stage / name / "new").write_text(name)
    replace_dirs(stage, final, ["featurize", "train"])
    assert _tree(final) == {"featurize/new": "featurize", "train/new": "train"}
