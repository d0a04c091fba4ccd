"""Precision: fp32 by default (the official code has no AMP), and every record says which ran."""
from __future__ import annotations

import json
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
    assert KNN_DEFAULTS["cpu_bf16"] is False and LINEAR_DEFAULTS["cpu_bf16"] is False
    assert PRETRAIN_DEFAULTS["cpu_bf16"] is False


@pytest.mark.parametrize("amp, cpu_bf16, device, expected", [
    (False, False, "cpu", "fp32"), (True, False, "cpu", "fp32"),  # fp16 autocast is only used on CUDA
    (False, False, "cuda", "fp32"), (True, False, "cuda", "amp-fp16"),
    (False, True, "cpu", "cpu-bf16"), (False, True, "cuda", "fp32"), (True, True, "cuda", "amp-fp16"),
])
def test_precision_name(amp, cpu_bf16, device, expected):
    assert precision_name(amp, torch.device(device), cpu_bf16) == expected


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


def _first_conv_inputs(monkeypatch) -> list[tuple[torch.dtype, torch.dtype, bool]]:
    """(input dtype, output dtype, input channels_last) of every conv call, recorded from here on."""
    calls, real = [], torch.nn.Conv2d._conv_forward

    def recording(self, x, weight, bias):
        out = real(self, x, weight, bias)
        calls.append((x.dtype, out.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", recording)
    return calls


def test_cpu_bf16_extraction_runs_in_bf16_and_stays_close_to_fp32(shapes_root, tmp_path, monkeypatch):
    fp32 = run_knn(_evaluation(KNN_DEFAULTS, shapes_root, tmp_path, k="[5]"), CPU)
    calls = _first_conv_inputs(monkeypatch)
    bf16 = run_knn(_evaluation(KNN_DEFAULTS, shapes_root, tmp_path, k="[5]", cpu_bf16=True), CPU)
    assert calls and all(out == torch.bfloat16 and channels_last for _, out, channels_last in calls)
    assert bf16["settings"]["precision"] == "cpu-bf16" and fp32["settings"]["precision"] == "fp32"
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4  # its own cache entries, never mixed with fp32
    assert abs(bf16["metrics"]["top1"] - fp32["metrics"]["top1"]) <= 5.0  # 300 shapes images: 5 points = 15 images


def test_cpu_bf16_features_match_fp32_to_bf16_rounding(shapes_root):
    from simsiam_eval.data.specs import open_dataset, prepare_dataset
    from simsiam_eval.data.sizes import evaluation_transform
    from simsiam_eval.features import extract_features, load_frozen_backbone

    spec = f"shapes:{shapes_root}@val"
    dataset = open_dataset(prepare_dataset(spec), evaluation_transform(32, spec, spec))
    _, backbone, _ = load_frozen_backbone("random:resnet18:cifar:8")
    fp32, _ = extract_features(backbone, dataset, torch.device("cpu"), workers=0, progress=False)
    bf16, _ = extract_features(backbone, dataset, torch.device("cpu"), workers=0, progress=False,
                               precision="cpu-bf16")
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
    assert not torch.equal(fp32, bf16)  # bf16 did run
    assert cosine.min() > 0.99  # documented tolerance (README, Precision): per-image cosine to fp32 above 0.99


def test_cpu_bf16_pretraining_runs_in_bf16_and_follows_fp32(shapes_root, tmp_path, monkeypatch):
    from test_pretrain import pretrain

    assert pretrain(shapes_root, tmp_path / "fp32", "epochs=1") == 0
    calls = _first_conv_inputs(monkeypatch)
    assert pretrain(shapes_root, tmp_path / "bf16", "epochs=1", "cpu_bf16=true") == 0
    assert calls and all(out == torch.bfloat16 and channels_last for _, out, channels_last in calls)
    rows = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1]) for run in ("fp32", "bf16")]
    weights = [torch.load(tmp_path / run / "checkpoint_0000.pth.tar", weights_only=True)["state_dict"]
               for run in ("fp32", "bf16")]
    assert all(w.dtype == torch.float32 for w in weights[1].values() if w.is_floating_point())  # fp32 master weights
    key = "module.encoder.layer1.0.conv1.weight"
    assert not torch.equal(weights[0][key], weights[1][key])
    assert abs(rows[0]["loss"] - rows[1]["loss"]) < 0.01  # measured 0.0008 after one epoch
