"""Linear probe: accuracy on separable features, main_lincls' steps re-stated, frozen backbone, resume,
metrics, bad inputs.

CI guards of the rows of tools/parity/simsiam_lincls.py (which needs the official checkout):
surgery rows: test_surgery_leaves_only_the_classifier_missing; fc init:
test_classifier_init_is_main_lincls_normal_draw; lr per epoch (also the 90-epoch schedule):
test_linear_probe_separates_separable_features; fc after N steps, val top-1/top-5 per epoch:
test_protocol_steps_equal_main_lincls_restated (and tests/test_lars.py for the LARC formula); best
top-1 and best epoch: test_record_holds_the_best_epoch_as_main_lincls_and_the_last; backbone unchanged:
test_protocol_mode_leaves_every_backbone_tensor_bit_identical; transforms: tests/test_data.py
test_linear_transforms_are_main_lincls.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

import simsiam_eval.linear.evaluate as linear_evaluate
import simsiam_eval.linear.trainer as linear_trainer
from simsiam_eval import cli
from simsiam_eval.checkpoints import build_backbone, read_checkpoint
from simsiam_eval.config import load_config
from simsiam_eval.distributed import DistInfo
from simsiam_eval.errors import UserError
from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
from simsiam_eval.linear.evaluate import run_linear
from simsiam_eval.linear.trainer import LinearTrainer, build_classifier, build_optimizer
from simsiam_eval.results.records import checkpoint_name

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY_BACKBONE = "random:resnet18:cifar:8"


def separable(n: int, dim: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(classes, dim, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    return centres[labels] + 0.3 * torch.randn(n, dim, generator=g), labels


# main_lincls' lr at epoch e of E: lr * (1 + cos(pi e / E)) / 2, worked out with cos 30 = 0.8660254038,
# cos 18/36/54/72 = 0.9510565163/0.8090169944/0.5877852523/0.3090169944 and cos 2 = 0.9993908270 (degrees)
LARS_90_EPOCHS = {0: 1.6, 15: 1.4928203230, 30: 1.2, 45: 0.8, 60: 0.4, 75: 0.1071796770, 89: 0.000487338384}
SGD_10_EPOCHS = dict(enumerate([30.0, 29.265847745, 27.135254916, 23.816778785, 19.635254916, 15.0, 10.364745084,
                                6.183221215, 2.864745084, 0.734152255]))


@pytest.mark.parametrize("optimizer,base_lr,batch,epochs,expected_lr", [("lars", 0.1, 4096, 90, LARS_90_EPOCHS),
                                                                        ("sgd", 30.0, 256, 10, SGD_10_EPOCHS)])
def test_linear_probe_separates_separable_features(optimizer, base_lr, batch, epochs, expected_lr):
    x, y = separable(2500, 32, 10, seed=0)
    train_x, train_y, val_x, val_y = x[:2000], y[:2000], x[2000:], y[2000:]
    lr = base_lr * batch / 256
    fc = build_classifier(32, 10, seed=0)
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.1) and fc.bias.abs().max() == 0
    trainer = LinearTrainer(fc, build_optimizer(fc.parameters(), optimizer, lr), lr, epochs, None, {})

    def batches(epoch):
        order = torch.randperm(2000, generator=torch.Generator().manual_seed(epoch))
        return [(train_x[order[s:s + batch]], train_y[order[s:s + batch]]) for s in range(0, 2000, batch)]

    history = trainer.fit(batches, lambda: [(val_x, val_y)])
    print(f"\n{optimizer} lr {lr} batch {batch}, {epochs} epochs: top-1 {history[-1]['top1']:.2f}%")
    assert history[-1]["top1"] >= 99.0
    assert {e: history[e]["lr"] for e in expected_lr} == pytest.approx(expected_lr, rel=1e-9)


def probe_config(shapes_root, tmp_path, **overrides):
    values = {"checkpoint": TINY_BACKBONE, "train": f"shapes:{shapes_root}@train",
              "val": f"shapes:{shapes_root}@val", "image_size": 32, "workers": 0, "progress": False,
              "tensorboard": False, "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"),
              "batch_size": 32, "eval_batch_size": 64, **overrides}
    return load_config(None, LINEAR_DEFAULTS, [f"{k}={v}" for k, v in values.items()])


def test_protocol_mode_leaves_every_backbone_tensor_bit_identical(shapes_root, tmp_path, monkeypatch):
    reference = build_backbone(read_checkpoint(TINY_BACKBONE))
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    held = build_backbone(read_checkpoint(TINY_BACKBONE)).train()  # handed over in train mode on purpose
    original = linear_evaluate.load_frozen_backbone

    def hand_over(*args, **kwargs):
        record, _, model_id = original(*args, **kwargs)
        return record, held.requires_grad_(False), model_id

    monkeypatch.setattr(linear_evaluate, "load_frozen_backbone", hand_over)
    record = run_linear(probe_config(shapes_root, tmp_path, mode="protocol", epochs=2), CPU)
    after = held.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert record["settings"]["backbone_unchanged"] is True and record["protocol"] == "linear"
    assert record["data"]["num_classes"] == 6


def test_record_holds_the_best_epoch_as_main_lincls_and_the_last(shapes_root, tmp_path, monkeypatch):
    # top-1 peaks at epoch 2 and ties at epoch 3: main_lincls keeps best_acc1 = 55 and saves
    # model_best.pth.tar only when acc1 > best_acc1, i.e. at epoch 2 (with that epoch's top-5, 90)
    scripted = iter([(40.0, 80.0), (55.0, 90.0), (55.0, 95.0), (50.0, 85.0)])

    def scripted_evaluate(*args, **kwargs):
        top1, top5 = next(scripted)
        return {"val_loss": 1.0, "top1": top1, "top5": top5}

    monkeypatch.setattr(linear_trainer, "evaluate", scripted_evaluate)
    metrics = run_linear(probe_config(shapes_root, tmp_path, mode="cached", epochs=4), CPU)["metrics"]
    assert (metrics["top1"], metrics["top5"], metrics["best_epoch"]) == (55.0, 90.0, 2)
    assert (metrics["last_top1"], metrics["last_top5"]) == (50.0, 85.0)


def test_cached_mode_resumes_to_the_same_result(shapes_root, tmp_path, monkeypatch):
    full = run_linear(probe_config(shapes_root, tmp_path / "a", mode="cached", epochs=4, views=2), CPU)
    calls = {"n": 0}
    real_evaluate = linear_trainer.evaluate

    def crash_on_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(linear_trainer, "evaluate", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_linear(probe_config(shapes_root, tmp_path / "b", mode="cached", epochs=4, views=2), CPU)
    monkeypatch.undo()
    resumed = run_linear(probe_config(shapes_root, tmp_path / "b", mode="cached", epochs=4, views=2), CPU)
    assert resumed["settings"]["resumed_from_epoch"] == 2
    assert resumed["metrics"] == full["metrics"]
    lines = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    assert all({"epoch", "loss", "lr", "top1", "top5"} <= set(line) for line in lines)
    with pytest.raises(UserError, match="different linear probe"):
        run_linear(probe_config(shapes_root, tmp_path / "b", mode="cached", epochs=5, views=2), CPU)


def run_cli(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("command", ["linear", "knn"])
def test_bad_inputs_give_one_line_errors(shapes_root, tmp_path, capsys, command):
    common = ["--train", f"shapes:{shapes_root}@train", "--val", f"shapes:{shapes_root}@val", "--image-size", "32",
              "--workers", "0", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--output-dir",
              str(tmp_path / "out")]
    no_backbone = tmp_path / "heads_only.pth"
    torch.save({"state_dict": {"module.predictor.0.weight": torch.zeros(4, 4)}}, no_backbone)
    other_classes = tmp_path / "other"
    shutil.copytree(shapes_root / "val", other_classes)
    (other_classes / "circle").rename(other_classes / "ellipse")
    empty = tmp_path / "empty"
    (empty / "circle").mkdir(parents=True)
    cases = {
        "no backbone": (["--checkpoint", str(no_backbone)], str(no_backbone)),
        "arch mismatch": (["--checkpoint", TINY_BACKBONE, "--arch", "resnet50"], "resnet50"),
        "class sets": (["--checkpoint", TINY_BACKBONE, "--val", str(other_classes)], "different class sets"),
        "empty split": (["--checkpoint", TINY_BACKBONE, "--val", str(empty)], str(empty)),
    }
    for name, (extra, expected) in cases.items():
        code, err = run_cli([command, *common, *extra], capsys)
        assert code == 2, name
        assert len(err.splitlines()) == 1 and expected in err, (name, err)


def test_name_labels_the_record_in_tables(shapes_root, tmp_path):
    output = tmp_path / "knn.json"
    assert cli.main(["knn", "--checkpoint", TINY_BACKBONE, "--train", f"shapes:{shapes_root}@train", "--val",
                     f"shapes:{shapes_root}@val", "--image-size", "32", "--k", "5", "--workers", "0", "--no-progress",
                     "--cache-dir", str(tmp_path / "cache"), "--output", str(output), "--name", "my baseline",
                     "--tag", "baseline"]) == 0
    record = json.loads(output.read_text())
    assert record["checkpoint"]["name"] == "my baseline" and checkpoint_name(record) == "my baseline"
    assert 0 < record["metrics"]["feature_std"] < 1  # the bank's spread (tests/test_features.py checks its value)
    assert record["tags"] == ["baseline"]


COLOURS = {"black": (20, 20, 20), "white": (235, 235, 235), "red": (220, 40, 40), "cyan": (40, 220, 220)}


@pytest.fixture(scope="module")
def colours_root(tmp_path_factory) -> Path:
    """ImageFolder train/val of four classes, one colour each plus pixel noise, 16 px: learnable through the
    pool5 of a randomly initialised ResNet-18 (LARS reaches 100% in ~10 epochs; chance is 25%)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 32), ("val", 8)):
        for name, rgb in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = np.asarray(rgb, dtype=float) + rng.normal(0, 15, (16, 16, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """A torchvision ResNet-18 state dict (seeded init, BN statistics moved off 0/1) saved to a file."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def colours_config(root, checkpoint, tmp_path, **overrides):
    values = {"checkpoint": checkpoint, "train": root / "train", "val": root / "val", "mode": "protocol",
              "image_size": 16, "resize": 16, "batch_size": 16, "workers": 0, "progress": False,
              "tensorboard": False, "cache": False, "output_dir": tmp_path / "run", **overrides}
    return load_config(None, LINEAR_DEFAULTS, [f"{k}={v}" for k, v in values.items()])


@pytest.mark.slow
def test_protocol_mode_learns_separable_classes_with_a_clear_margin(colours_root, resnet18_file, tmp_path):
    # LARS as main_lincls runs it; lr 16 (base 256 x 16/256): with trust 0.001 the fc moves 1.6% of its
    # norm per step, so 160 steps suffice (main_lincls' lr 1.6 needs its thousands of steps)
    cfg = colours_config(colours_root, resnet18_file, tmp_path, optimizer="lars", base_lr=256, epochs=20)
    metrics = run_linear(cfg, CPU)["metrics"]
    print(f"\nprotocol LARS on 4 colour classes: best top-1 {metrics['top1']:.1f}% (epoch "
          f"{metrics['best_epoch']:.0f}), last {metrics['last_top1']:.1f}%")
    assert metrics["top1"] >= 90.0 and metrics["last_top1"] >= 90.0  # chance: 25%


class RecordingDataLoader(DataLoader):
    """A DataLoader that keeps a copy of every training batch it yields."""

    batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __iter__(self):
        for images, labels in super().__iter__():
            if isinstance(self.sampler, DistributedSampler):
                self.batches.append((images.clone(), labels.clone()))
            yield images, labels


def main_lincls_restated(checkpoint: Path, classes: int, batches, lr_per_step: list[float], seed: int):
    """main_lincls.py written out from its documented steps, on given batches: a torchvision ResNet with a
    ``classes``-way fc, backbone frozen and in eval mode, fc ~ N(0, 0.01) (drawn by normal_ from a
    generator seeded ``seed``), bias 0; cross-entropy; apex LARC (trust 0.001, clip False, no weight
    decay) wrapping SGD with momentum 0.9."""
    model = torchvision.models.resnet18(num_classes=classes)
    model.load_state_dict(torch.load(checkpoint, weights_only=True) | {
        "fc.weight": torch.empty(classes, 512).normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed)),
        "fc.bias": torch.zeros(classes)})
    model.requires_grad_(False).eval()
    weight, bias = model.fc.weight.requires_grad_(), model.fc.bias.requires_grad_()
    momentum = {}
    for (images, labels), lr in zip(batches, lr_per_step, strict=True):
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, [weight, bias])
        with torch.no_grad():
            for name, p, g in (("weight", weight, grads[0]), ("bias", bias, grads[1])):
                p_norm, g_norm = p.norm().item(), g.norm().item()
                if p_norm != 0 and g_norm != 0:
                    g = g * (0.001 * p_norm / (g_norm + 1e-8))
                momentum[name] = g.clone() if name not in momentum else 0.9 * momentum[name] + g
                p -= lr * momentum[name]
    return weight.detach(), bias.detach()


def test_protocol_steps_equal_main_lincls_restated(colours_root, resnet18_file, tmp_path, monkeypatch):
    RecordingDataLoader.batches = []
    monkeypatch.setattr(linear_evaluate, "DataLoader", RecordingDataLoader)
    cfg = colours_config(colours_root, resnet18_file, tmp_path, optimizer="lars", base_lr=25.6, epochs=2, seed=3)
    run_linear(cfg, CPU)
    fc = torch.load(tmp_path / "run" / "linear_state.pth", weights_only=True)["fc"]
    steps = len(RecordingDataLoader.batches)
    assert steps == 2 * 128 // 16
    lr_per_step = [1.6] * (steps // 2) + [0.8] * (steps // 2)  # 25.6 x 16/256, then x (1 + cos(pi/2)) / 2
    weight, bias = main_lincls_restated(resnet18_file, 4, RecordingDataLoader.batches, lr_per_step, seed=3)
    initial = torch.empty(4, 512).normal_(0.0, 0.01, generator=torch.Generator().manual_seed(3))
    assert (weight - initial).abs().max() > 1e-4 and bias.abs().max() > 0.1  # the steps moved the fc
    assert (fc["weight"] - weight).abs().max().item() <= 1e-6
    assert (fc["bias"] - bias).abs().max().item() <= 1e-6


def test_classifier_init_is_main_lincls_normal_draw():
    # main_lincls: fc.weight.data.normal_(mean=0.0, std=0.01); fc.bias.data.zero_()
    fc = build_classifier(512, 10, seed=5)
    expected = torch.empty(10, 512).normal_(0.0, 0.01, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fc.weight.detach(), expected) and torch.equal(fc.bias.detach(), torch.zeros(10))


def test_surgery_leaves_only_the_classifier_missing(tmp_path):
    """main_lincls' surgery on a main_simsiam checkpoint: keep 'module.encoder.*' but not 'module.encoder.fc*',
    strip the prefix, load with strict=False into a torchvision ResNet: only fc.weight and fc.bias missing."""
    torch.manual_seed(0)
    encoder = torchvision.models.resnet18(num_classes=32)
    encoder.fc = torch.nn.Sequential(torch.nn.Linear(512, 512, bias=False), torch.nn.BatchNorm1d(512),
                                     torch.nn.ReLU(), torch.nn.Linear(512, 32), torch.nn.BatchNorm1d(32, affine=False))
    predictor = torch.nn.Sequential(torch.nn.Linear(32, 8, bias=False), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                    torch.nn.Linear(8, 32))
    state = {**{f"module.encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"module.predictor.{k}": v for k, v in predictor.state_dict().items()}}
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": state}, tmp_path / "checkpoint_0099.pth.tar")
    kept = {k[len("module.encoder."):]: v for k, v in state.items()
            if k.startswith("module.encoder.") and not k.startswith("module.encoder.fc")}
    ckpt = read_checkpoint(tmp_path / "checkpoint_0099.pth.tar")
    assert set(ckpt.state_dict) == set(kept) and all(torch.equal(ckpt.state_dict[k], kept[k]) for k in kept)
    assert sorted(ckpt.dropped) == sorted(set(state) - {f"module.encoder.{k}" for k in kept})
    missing = torchvision.models.resnet18().load_state_dict(ckpt.state_dict, strict=False)
    assert set(missing.missing_keys) == {"fc.weight", "fc.bias"} and not missing.unexpected_keys
    assert set(build_backbone(ckpt).state_dict()) == set(kept)  # everything loaded, nothing else
