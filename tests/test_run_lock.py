"""A second run into an output folder that a live run holds is refused with one line naming the holder;
the holder's files are untouched, and a killed holder leaves no stale lock."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from simsiam_eval.errors import UserError
from simsiam_eval.linear.evaluate import run_linear
from test_linear import CPU, probe_config
from test_pretrain import pretrain

HOLDER = ("import sys, time\nfrom simsiam_eval.run_lock import hold_output_dir\n"
          "with hold_output_dir(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")


@pytest.fixture
def held_folder(tmp_path):
    """``tmp_path/run`` held by another live process (SIGKILLed at the end of the test, or by the test)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_pretraining_into_a_held_folder_is_refused_until_the_holder_dies(shapes_root, held_folder, capsys):
    folder, holder = held_folder
    (folder / "config.yaml").write_text("the holder's config\n")
    capsys.readouterr()
    assert pretrain(shapes_root, folder, "epochs=1") != 0
    err = capsys.readouterr().err.strip()
    assert f"in use by another run (pid {holder.pid}" in err and "\n" not in err
    assert (folder / "config.yaml").read_text() == "the holder's config\n"
    assert not (folder / "checkpoint_0000.pth.tar").exists()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert pretrain(shapes_root, folder, "epochs=1") == 0  # no stale lock after a SIGKILL
    assert (folder / "checkpoint_0000.pth.tar").exists()


def test_a_linear_probe_into_a_held_folder_is_refused(shapes_root, held_folder, tmp_path):
    folder, holder = held_folder
    with pytest.raises(UserError, match=f"in use by another run \\(pid {holder.pid}"):
        run_linear(probe_config(shapes_root, tmp_path, mode="cached", epochs=1, output_dir=str(folder)), CPU)
    assert not (folder / "linear_state.pth").exists()


@pytest.mark.detectron2
def test_a_transfer_run_into_a_held_folder_is_refused_before_it_converts(data_root, held_folder, capsys):
    from simsiam_eval.cli import main

    folder, holder = held_folder
    capsys.readouterr()
    assert main(["transfer", "--checkpoint", "random:resnet18:cifar:16", "--task",
                 "smoke/faster_rcnn_shapes_voc_r18_cifar.yaml", "--data-root", str(data_root),
                 "--output-dir", str(folder), "--trials", "1", "--quiet", "SOLVER.MAX_ITER", "1"]) != 0
    err = capsys.readouterr().err.strip()
    assert f"in use by another run (pid {holder.pid}" in err and "\n" not in err
    assert sorted(p.name for p in folder.iterdir()) == [".simsiam-eval.lock"]
