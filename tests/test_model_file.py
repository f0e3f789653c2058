"""Saved models and checkpoints: read back as tensors and plain values only, and a file that
cannot be read is named with what to do."""

from pathlib import Path

import pytest
import torch

from wsss.platform.model_file import ModelFileError, load_model_file


class NotPlainData:
    """Stands in for what a tampered file smuggles in: an object whose unpickling runs code."""

    def __reduce__(self):
        return (print, ("this ran",))


def test_a_saved_dict_reads_back(tmp_path: Path):
    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.ones(2)}, "classes": ["a", "b"]}, path)
    saved = load_model_file(path)
    assert saved["classes"] == ["a", "b"] and torch.equal(saved["model"]["w"], torch.ones(2))


def test_a_truncated_file_is_named_with_its_folder_and_what_to_do(tmp_path: Path):
    path = tmp_path / "step2-abc" / "irnet.pt"  # in the store; a run folder links to it
    path.parent.mkdir()
    torch.save({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    linked = tmp_path / "run" / "step2"
    linked.parent.mkdir()
    linked.symlink_to(path.parent)
    with pytest.raises(ModelFileError) as raised:
        load_model_file(linked / "irnet.pt")
    message = str(raised.value)
    assert message.startswith(f"{linked / 'irnet.pt'} cannot be read as a saved model (")
    assert f"remove the folder that holds it ({path.parent})" in message


def test_a_file_that_asks_to_run_code_is_refused(tmp_path: Path, capsys):
    path = tmp_path / "classifier.pt"
    torch.save({"model": NotPlainData()}, path)
    with pytest.raises(ModelFileError, match="UnpicklingError"):
        load_model_file(path)
    assert "this ran" not in capsys.readouterr().out


def test_a_missing_file_stays_a_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_model_file(tmp_path / "gone.pt")
