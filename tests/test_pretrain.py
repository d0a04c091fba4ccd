"""The training loop end to end on CPU: official checkpoint layout, resume, DDP (gloo), bad inputs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import models

from simsiam_eval.cli import main

TINY = ["knn.every_n_epochs=0", "batch_size=24", "model.stem=cifar", "model.width=8", "model.dim=64",
        "model.pred_dim=16", "workers=0", "progress=false", "tensorboard=false", "data.image_size=32"]


def pretrain(shapes_root: Path, output_dir: Path, *extra: str) -> int:
    return main(["pretrain", "pretrain/shapes_cpu", f"output_dir={output_dir}",
                 f"data.train=shapes:{shapes_root}@train", *TINY, *extra])


def test_checkpoint_loads_by_the_main_lincls_procedure(shapes_root, tmp_path):
    assert pretrain(shapes_root, tmp_path, "epochs=1", "model.stem=imagenet", "model.width=64") == 0
    checkpoint = torch.load(tmp_path / "checkpoint_0000.pth.tar", map_location="cpu", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["arch"]) == (1, "resnet18")
    assert {"state_dict", "optimizer"} <= checkpoint.keys()
    # main_lincls.py: keep module.encoder.* except module.encoder.fc, strip the prefix, strict=False.
    state_dict = {k[len("module.encoder."):]: v for k, v in checkpoint["state_dict"].items()
                  if k.startswith("module.encoder") and not k.startswith("module.encoder.fc")}
    model = models.__dict__[checkpoint["arch"]]()
    result = model.load_state_dict(state_dict, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and result.unexpected_keys == []
    assert any(k.startswith("module.predictor.") for k in checkpoint["state_dict"])
    # init.pth.tar: the starting weights in the same layout (the no-pretraining control), not a resume point
    init = torch.load(tmp_path / "init.pth.tar", map_location="cpu", weights_only=True)
    assert init["epoch"] == 0 and init["state_dict"].keys() == checkpoint["state_dict"].keys()
    key = "module.encoder.layer1.0.conv1.weight"
    assert not torch.equal(init["state_dict"][key], checkpoint["state_dict"][key])
    assert init["state_dict"]["module.encoder.layer1.0.bn2.weight"].abs().max() == 0  # zero_init_residual


def test_resume_gives_the_same_weights_as_training_straight(shapes_root, tmp_path):
    assert pretrain(shapes_root, tmp_path / "straight", "epochs=2", "workers=1") == 0
    assert pretrain(shapes_root, tmp_path / "resumed", "epochs=1", "workers=1") == 0
    assert pretrain(shapes_root, tmp_path / "resumed", "epochs=2", "workers=1") == 0  # auto-resume
    straight = torch.load(tmp_path / "straight/checkpoint_0001.pth.tar", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/checkpoint_0001.pth.tar", weights_only=True)
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    first = torch.load(tmp_path / "resumed/checkpoint_0000.pth.tar", weights_only=True)
    assert not torch.equal(first["state_dict"]["module.encoder.conv1.weight"],
                           resumed["state_dict"]["module.encoder.conv1.weight"])
    lines = (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one line per epoch, none duplicated by the resume


def test_checkpoint_names_are_the_official_zero_based_epoch_index(shapes_root, tmp_path):
    # main_simsiam.py: filename='checkpoint_{:04d}.pth.tar'.format(epoch) for the 0-based loop index,
    # holding 'epoch': epoch + 1 (a 100-epoch run ends with checkpoint_0099 holding epoch 100)
    assert pretrain(shapes_root, tmp_path, "epochs=3") == 0
    names = sorted(p.name for p in tmp_path.glob("checkpoint_*"))
    assert names == ["checkpoint_0000.pth.tar", "checkpoint_0001.pth.tar", "checkpoint_0002.pth.tar"]
    held = [torch.load(tmp_path / name, weights_only=True)["epoch"] for name in names]
    assert held == [1, 2, 3]


def test_keep_last_and_finished_run(shapes_root, tmp_path, capsys):
    assert pretrain(shapes_root, tmp_path, "epochs=3", "keep_last=1") == 0
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == ["checkpoint_0002.pth.tar"]
    capsys.readouterr()
    assert pretrain(shapes_root, tmp_path, "epochs=3") == 0
    assert "already trained for 3 epochs (epochs=3); nothing to do" in capsys.readouterr().out


@pytest.mark.slow
def test_two_process_gloo_ddp(shapes_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "-m", "simsiam_eval", "pretrain", "pretrain/shapes_cpu", f"output_dir={tmp_path}",
               f"data.train=shapes:{shapes_root}@train", "epochs=1", *TINY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "checkpoint_0000.pth.tar", weights_only=True)
    keys = checkpoint["state_dict"].keys()
    assert all(k.startswith(("module.encoder.", "module.predictor.")) for k in keys)
    assert "module.encoder.fc.4.running_mean" in keys  # SyncBN converted back to the plain BN names
    assert checkpoint["config"]["batch_size"] == 24 and "2 process(es)" in result.stdout + result.stderr


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def test_bad_inputs_are_one_line_errors(shapes_root, tmp_path, capsys):
    code, err = run_cli(capsys, "pretrain", f"output_dir={tmp_path}/a", f"data.train={tmp_path}/nowhere")
    assert code == 2 and err == f"simsiam-eval pretrain: error: {tmp_path}/nowhere: dataset folder does not exist"
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "pretrain", f"output_dir={tmp_path}/b", f"data.train={tmp_path}/empty")
    assert code == 2 and "empty" in err and "no images found" in err and len(err.splitlines()) == 1
    code, err = run_cli(capsys, "pretrain", "optim.learning_rate=0.1")
    assert code == 2 and err == ("simsiam-eval pretrain: error: unknown config key 'optim.learning_rate' "
                                 "(command line)")


def test_corrupt_image_is_named(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(tmp_path / "data" / name / f"{i}.png")
    (tmp_path / "data" / "b" / "5.png").write_bytes(b"garbage")
    code, err = run_cli(capsys, "pretrain", f"output_dir={tmp_path}/run", f"data.train={tmp_path}/data",
                        *TINY, "workers=1", "epochs=1")
    assert code == 2 and err.endswith(f"{tmp_path}/data/b/5.png: corrupt or unreadable image (not a format PIL "
                                      "reads, or a damaged header)")
    assert len(err.splitlines()) == 1


def test_resume_with_another_arch_is_refused(shapes_root, tmp_path, capsys):
    assert pretrain(shapes_root, tmp_path, "epochs=1") == 0
    code, err = run_cli(capsys, "pretrain", "pretrain/shapes_cpu", f"output_dir={tmp_path}",
                        f"data.train=shapes:{shapes_root}@train", *TINY, "epochs=2", "model.arch=resnet34")
    assert code == 2
    assert err == (f"simsiam-eval pretrain: error: {tmp_path}/checkpoint_0000.pth.tar: cannot resume, the "
                   "checkpoint's model differs: arch='resnet18' (config has 'resnet34')")
