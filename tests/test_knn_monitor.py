"""The kNN monitor inside ``train()``: its metrics.jsonl value is what ``knn`` gives on that epoch's checkpoint,
and switching it on does not change the training run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.checkpointing import list_checkpoints
from pretrain.defaults import PRETRAIN_DEFAULTS
from pretrain.train import train
from simsiam_eval.config import load_config
from simsiam_eval.distributed import DistInfo
from simsiam_eval.knn.defaults import KNN_DEFAULTS
from simsiam_eval.knn.evaluate import run_knn

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY = ["batch_size=24", "model.stem=cifar", "model.width=8", "model.dim=64", "model.pred_dim=16", "workers=0",
        "progress=false", "tensorboard=false", "data.image_size=32"]


def checkpoints_by_epoch(output_dir: Path) -> dict[int, Path]:
    """Each training checkpoint of a run, keyed by the ``epoch`` it holds (whatever its file is called)."""
    return {torch.load(path, map_location="cpu", weights_only=True)["epoch"]: path
            for path in list_checkpoints(output_dir)}


def monitored_run(shapes_root: Path, output_dir: Path, every_n_epochs: int):
    data = f"shapes:{shapes_root}"
    cfg = load_config("pretrain/shapes_cpu", PRETRAIN_DEFAULTS, [
        f"output_dir={output_dir}", f"data.train={data}@train", f"knn.train={data}@train",
        f"knn.val={data}@val", f"knn.every_n_epochs={every_n_epochs}", "knn.image_size=0", "epochs=2", *TINY])
    train(cfg)
    return cfg


def test_monitor_value_equals_knn_on_the_checkpoint_of_that_epoch(shapes_root, tmp_path):
    cfg = monitored_run(shapes_root, tmp_path / "run", every_n_epochs=1)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    monitored = {line["epoch"]: (line["knn_top1"], line["knn_top5"]) for line in lines}
    checkpoints = checkpoints_by_epoch(tmp_path / "run")
    assert sorted(monitored) == sorted(checkpoints) == [1, 2]
    for epoch, path in checkpoints.items():
        knn_cfg = load_config(None, KNN_DEFAULTS, [
            f"checkpoint={path}", f"train={cfg.knn.train}", f"val={cfg.knn.val}", f"k=[{cfg.knn.k}]",
            f"temperature={cfg.knn.temperature}", "workers=0", "progress=false", f"cache_dir={tmp_path / 'cache'}"])
        record = run_knn(knn_cfg, CPU)
        assert record["settings"]["image_size"] == 32  # the tiny shapes' native size, as the monitor's
        assert (record["metrics"]["top1"], record["metrics"]["top5"]) == pytest.approx(monitored[epoch], abs=1e-9), \
            epoch
    first, last = (monitored[e][0] for e in (1, 2))
    print(f"\nmonitor kNN top-1 (k {cfg.knn.k}, T {cfg.knn.temperature}): epoch 1 {first:.2f}%, epoch 2 {last:.2f}%")


def test_the_monitor_leaves_training_bit_identical(shapes_root, tmp_path):
    """The monitor's loaders draw seeds from torch's generator; unless it is restored, every later
    augmentation (and so every weight) differs from the run without the monitor."""
    for every in (1, 0):
        monitored_run(shapes_root, tmp_path / f"every{every}", every_n_epochs=every)
    with_monitor, without = (torch.load(checkpoints_by_epoch(tmp_path / f"every{every}")[2], map_location="cpu",
                                        weights_only=True)["state_dict"] for every in (1, 0))
    assert with_monitor.keys() == without.keys()
    assert all(torch.equal(with_monitor[key], without[key]) for key in without)
