"""Precision: fp32 by default (the official code has no AMP), and every record says which ran."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.defaults import PRETRAIN_DEFAULTS
from simsiam_eval.config import load_config
from simsiam_eval.distributed import DistInfo
from simsiam_eval.knn.defaults import KNN_DEFAULTS
from simsiam_eval.knn.evaluate import run_knn
from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
from simsiam_eval.linear.evaluate import run_linear
from simsiam_eval.precision import precision_name

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.mark.parametrize("preset", ["pretrain/imagenet_r50", "pretrain/cifar10_r18", "pretrain/shapes_cpu"])
def test_pretraining_presets_run_in_the_official_fp32(preset):
    # imagenet_r50 cites 68.1% (main_simsiam.py, fp32 throughout): AMP must be asked for explicitly
    assert load_config(preset, PRETRAIN_DEFAULTS).amp is False
    assert load_config(preset, PRETRAIN_DEFAULTS, ["amp=true"]).amp is True


def test_evaluations_default_to_fp32():
    assert KNN_DEFAULTS["amp"] is False and LINEAR_DEFAULTS["amp"] is False


@pytest.mark.parametrize("amp, device, expected", [
    (False, "cpu", "fp32"), (True, "cpu", "fp32"),  # autocast is only used on CUDA
    (False, "cuda", "fp32"), (True, "cuda", "amp-fp16"),
])
def test_precision_name(amp, device, expected):
    assert precision_name(amp, torch.device(device)) == expected


def _evaluation(defaults: dict, shapes_root: Path, tmp_path: Path, **extra):
    values = {"checkpoint": "random:resnet18:cifar:8", "train": f"shapes:{shapes_root}@train",
              "val": f"shapes:{shapes_root}@val", "image_size": 32, "workers": 0, "progress": False,
              "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"), **extra}
    return load_config(None, defaults, [f"{k}={v}" for k, v in values.items()])


@pytest.mark.parametrize("amp", [False, True])
def test_knn_and_linear_records_state_the_precision(shapes_root, tmp_path, amp):
    knn = run_knn(_evaluation(KNN_DEFAULTS, shapes_root, tmp_path, k="[5]", amp=amp), CPU)
    linear = run_linear(_evaluation(LINEAR_DEFAULTS, shapes_root, tmp_path, mode="cached", epochs=1,
                                    tensorboard=False, amp=amp), CPU)
    # on the CPU no autocast runs, whatever amp says: the record must not claim fp16
    assert knn["settings"]["precision"] == "fp32"
    assert linear["settings"]["precision"] == "fp32"


@pytest.mark.detectron2
@pytest.mark.parametrize("amp, device, expected", [
    (False, "cpu", "fp32"), (True, "cpu", "fp32"), (False, "cuda", "fp32"), (True, "cuda", "amp-fp16"),
])
def test_transfer_records_state_the_precision(amp, device, expected, tmp_path):
    from transfer.configs import task_config
    from simsiam_eval.config import load_config
    from transfer.defaults import TRANSFER_DEFAULTS
    from transfer.run import run_settings
    from transfer.trainer import build_config

    config_file = task_config("voc07")
    cfg = build_config(str(config_file), ["SOLVER.AMP.ENABLED", str(amp)])
    cfg.MODEL.DEVICE = device  # as resolved on a machine with a GPU
    options = load_config(None, TRANSFER_DEFAULTS, ["checkpoint=x", "task=voc07"])
    assert run_settings(options, config_file, cfg, 1, "none", tmp_path)["precision"] == expected
