"""The bad-input corpus (tests/bad_inputs.py), each file fed to every command that reads it: a one-line error
naming the file and the problem, a non-zero exit, no checkpoint, record, cache entry or temporary file
written (only a run's complete set-up files), and no code from the file run (whose payload is shown to be
live)."""
from __future__ import annotations

import pickle
import re

import pytest
import torch
import yaml

from bad_inputs import CORPUS, PAYLOAD_MARKER, run_case
from simsiam_eval.checkpoints.files import load_file

CASES = [(case, command) for case in CORPUS for command in case.commands]
# What a run writes before it reads its data: the folder's lock, the resolved config, pretraining's
# epoch-0 weights and an empty TensorBoard log, each complete (written atomically or empty).
SET_UP_FILES = {".simsiam-eval.lock", "config.yaml", "init.pth.tar"}


def assert_only_complete_set_up_files(folder):
    for path in (p for p in folder.rglob("*") if p.is_file()):
        assert path.name in SET_UP_FILES or path.parent.name == "tensorboard", f"{path} was written"
        if path.name == "config.yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict)
        if path.name == "init.pth.tar":
            assert load_file(path)["epoch"] == 0


@pytest.mark.parametrize(("case", "command"), CASES, ids=[f"{case.name} | {command}" for case, command in CASES])
def test_a_bad_input_gets_a_one_line_error_and_nothing_is_written(case, command, tmp_path):
    if command.startswith("transfer"):
        pytest.importorskip("detectron2", reason="detectron2 not installed (see ../shared/DETECTRON2.md)")
    code, err, file = run_case(case, command, tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, err
    assert file.name in lines[0] and re.search(case.problem, lines[0]), lines[0]
    assert_only_complete_set_up_files(tmp_path / "out")
    assert not (tmp_path / PAYLOAD_MARKER).exists(), "the file's code ran"


@pytest.mark.parametrize("case", [case for case in CORPUS if case.hostile], ids=lambda case: case.name)
def test_the_hostile_payloads_are_live(case, tmp_path):
    """Loaded without our guards, each hostile file does run its code: the test above proves something."""
    file = case.make(tmp_path)
    if file.suffix in (".pth",):
        torch.load(file, weights_only=False)
    else:
        with open(file, "rb") as f:
            pickle.load(f, encoding="latin1")
    assert (tmp_path / PAYLOAD_MARKER).exists()
