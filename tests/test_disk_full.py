"""A write that meets a full or read-only disk stops the run with one line naming the file; the previous
checkpoint and earlier records stay intact, and the run resumes once space is back."""
from __future__ import annotations

import builtins
import errno
import json

import pytest
import torch

import simsiam_eval.atomic as atomic
from simsiam_eval.atomic import atomic_torch_save, atomic_write_json
from simsiam_eval.errors import UserError
from test_pretrain import pretrain


class FullDisk:
    """An ``open`` whose files, for targets whose temporary name contains ``marker``, fail to write."""

    def __init__(self, marker: str, code: int = errno.ENOSPC) -> None:
        self.marker, self.code = marker, code

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)
        if self.marker not in str(path) or "w" not in mode:
            return handle
        code = self.code

        class Failing:
            def __getattr__(self, name):
                return getattr(handle, name)

            def write(self, data):
                handle.write(bytes(data)[:10] if "b" in mode else data[:10])
                raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Read-only file system")

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

        return Failing()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, code):
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "state.pt")
    atomic_write_json({"n": 1}, tmp_path / "record.json")
    monkeypatch.setattr(atomic, "open", FullDisk("state.pt", code), raising=False)
    with pytest.raises(UserError, match=r"state.pt: could not be written .*the previous version is intact"):
        atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "state.pt")
    monkeypatch.setattr(atomic, "open", FullDisk("record.json", code), raising=False)
    with pytest.raises(UserError, match=r"record.json: could not be written"):
        atomic_write_json({"n": 2}, tmp_path / "record.json")
    assert torch.equal(torch.load(tmp_path / "state.pt", weights_only=True)["w"], torch.ones(3))
    assert json.loads((tmp_path / "record.json").read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json", "state.pt"]  # no temporary left


def test_a_bug_in_the_writer_is_not_called_a_full_disk(tmp_path):
    with pytest.raises(Exception) as err:  # a local function cannot be pickled: our bug, not the disk's
        atomic_torch_save({"f": lambda: 0}, tmp_path / "x.pt")
    assert not isinstance(err.value, UserError)
    assert list(tmp_path.iterdir()) == []


def test_pretraining_stops_on_a_full_disk_and_resumes(shapes_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(atomic, "open", FullDisk("checkpoint_0001"), raising=False)
    capsys.readouterr()
    assert pretrain(shapes_root, tmp_path, "epochs=2") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "checkpoint_0001.pth.tar: could not be written (No space left on device" in err[-1]
    first = torch.load(tmp_path / "checkpoint_0000.pth.tar", weights_only=True)
    assert first["epoch"] == 1 and not (tmp_path / "checkpoint_0001.pth.tar").exists()
    # the line is written before the checkpoint (a kill between loses no line); the resume drops it
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    monkeypatch.undo()
    assert pretrain(shapes_root, tmp_path, "epochs=2") == 0  # space is back: resumes from epoch 1
    assert torch.load(tmp_path / "checkpoint_0001.pth.tar", weights_only=True)["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
