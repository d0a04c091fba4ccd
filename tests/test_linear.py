"""Linear probe: accuracy on separable features, frozen backbone, resume, metrics, bad inputs."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import simsiam_eval.linear as linear_module
import simsiam_eval.linear_probe as linear_probe
from simsiam_eval import cli
from simsiam_eval.checkpoints import build_backbone, read_checkpoint
from simsiam_eval.config import load_config
from simsiam_eval.distributed import DistInfo
from simsiam_eval.errors import UserError
from simsiam_eval.linear import LinearTrainer, build_classifier, build_optimizer, cosine_lr
from simsiam_eval.linear_probe import LINEAR_DEFAULTS, run_linear
from simsiam_eval.results.records import checkpoint_name

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY_BACKBONE = "random:resnet18:cifar:8"


def separable(n: int, dim: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(classes, dim, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    return centres[labels] + 0.3 * torch.randn(n, dim, generator=g), labels


@pytest.mark.parametrize("optimizer,base_lr,batch,epochs", [("lars", 0.1, 4096, 90), ("sgd", 30.0, 256, 10)])
def test_linear_probe_separates_separable_features(optimizer, base_lr, batch, epochs):
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
    assert [row["lr"] for row in history] == [cosine_lr(lr, e, epochs) for e in range(epochs)]


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
    original = linear_probe.load_frozen_backbone

    def hand_over(*args, **kwargs):
        record, _, model_id = original(*args, **kwargs)
        return record, held.requires_grad_(False), model_id

    monkeypatch.setattr(linear_probe, "load_frozen_backbone", hand_over)
    record = run_linear(probe_config(shapes_root, tmp_path, mode="protocol", epochs=2), CPU)
    after = held.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert record["settings"]["backbone_unchanged"] is True and record["protocol"] == "linear"
    assert record["data"]["num_classes"] == 6 and 0 <= record["metrics"]["top1"] <= 100


def test_record_holds_the_best_epoch_as_main_lincls_and_the_last(shapes_root, tmp_path, monkeypatch):
    # top-1 peaks at epoch 2 and ties at epoch 3: main_lincls keeps best_acc1 = 55 and saves
    # model_best.pth.tar only when acc1 > best_acc1, i.e. at epoch 2 (with that epoch's top-5, 90)
    scripted = iter([(40.0, 80.0), (55.0, 90.0), (55.0, 95.0), (50.0, 85.0)])

    def scripted_evaluate(*args, **kwargs):
        top1, top5 = next(scripted)
        return {"val_loss": 1.0, "top1": top1, "top5": top5}

    monkeypatch.setattr(linear_module, "evaluate", scripted_evaluate)
    metrics = run_linear(probe_config(shapes_root, tmp_path, mode="cached", epochs=4), CPU)["metrics"]
    assert (metrics["top1"], metrics["top5"], metrics["best_epoch"]) == (55.0, 90.0, 2)
    assert (metrics["last_top1"], metrics["last_top5"]) == (50.0, 85.0)


def test_cached_mode_resumes_to_the_same_result(shapes_root, tmp_path, monkeypatch):
    full = run_linear(probe_config(shapes_root, tmp_path / "a", mode="cached", epochs=4, views=2), CPU)
    calls = {"n": 0}
    real_evaluate = linear_module.evaluate

    def crash_on_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(linear_module, "evaluate", crash_on_third_epoch)
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
    assert record["tags"] == ["baseline"]
