"""The feature extractor and cache, distributed extraction, and the pretraining kNN monitor."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Subset

import simsiam_eval.features as features_module
from pretrain.model import SimSiam
from simsiam_eval.checkpoints import build_backbone, read_checkpoint
from simsiam_eval.data.sizes import evaluation_transform
from simsiam_eval.data.specs import open_dataset
from simsiam_eval.data.transforms import eval_transform, linear_train_transform
from simsiam_eval.features import FeatureCache, dataset_features, extract_features, feature_std
from simsiam_eval.knn.monitor import run_knn_monitor
from simsiam_eval.models import Pool5

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(read_checkpoint("random:resnet18:cifar:8"))


def test_features_are_pool5_of_the_frozen_backbone(shapes_root, backbone):
    dataset = open_dataset(f"shapes:{shapes_root}@val", eval_transform(32))
    backbone.train()
    feats, labels = extract_features(backbone, dataset, CPU, batch_size=7, workers=0, progress=False)
    assert backbone.training and all(m.training for m in backbone.modules())  # mode restored
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        expected = backbone.eval()(images)
    assert feats.shape == (len(dataset), 64) and torch.allclose(feats, expected, atol=1e-5)
    assert labels.tolist() == dataset.targets


def test_cache_is_reused_and_keyed_by_model_data_and_transform(shapes_root, backbone, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache", dtype="float16")
    spec = f"shapes:{shapes_root}@val"
    first = dataset_features(backbone, spec, eval_transform(32), CPU, model_id="ckpt-a", cache=cache,
                             workers=0, progress=False)
    assert first.features.dtype == torch.float32
    assert torch.equal(first.features, first.features.half().float())  # rounded like a cache hit
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1 and not list((tmp_path / "cache").glob(".*tmp"))

    def no_extraction(*args, **kwargs):
        raise AssertionError("features should have come from the cache")

    monkeypatch.setattr(features_module, "extract_features", no_extraction)
    again = dataset_features(backbone, spec, eval_transform(32), CPU, model_id="ckpt-a", cache=cache, workers=0)
    assert again.features.dtype == torch.float16  # as stored (memory-mapped), not converted on reading
    assert torch.equal(again.features.float(), first.features) and torch.equal(again.labels, first.labels)
    for changed in ({"model_id": "ckpt-b"}, {"transform": eval_transform(24)},
                    {"spec": f"shapes:{shapes_root}@train"}, {"view_seed": 3}):
        kwargs = {"spec": spec, "transform": eval_transform(32), "model_id": "ckpt-a", **changed}
        with pytest.raises(AssertionError, match="from the cache"):
            dataset_features(backbone, kwargs["spec"], kwargs["transform"], CPU, model_id=kwargs["model_id"],
                             cache=cache, workers=0, view_seed=kwargs.get("view_seed"))
    monkeypatch.undo()
    without_id = dataset_features(backbone, spec, eval_transform(32), CPU, model_id=None, cache=cache, workers=0,
                                  progress=False)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # a model without id is never cached
    assert torch.allclose(without_id.features, first.features, atol=1e-2)


def damage(path, how: str) -> None:
    """Spoil a cache file the way a crash, a full disk or an older writer would."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncated-header":
        path.write_bytes(data[:100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a torch file " * 50)
    elif how == "missing-labels":
        blob = torch.load(path, weights_only=True)
        del blob["labels"]
        torch.save(blob, path)
    else:
        torch.save([1, 2, 3], path)  # not a dict


@pytest.mark.parametrize("how, reason", [("truncated", "OSError"), ("truncated-header", "RuntimeError"),
                                         ("empty", "EOFError"),
                                         ("garbage", "UnpicklingError"), ("missing-labels", "KeyError: 'labels'"),
                                         ("not-a-dict", "TypeError")])
def test_unreadable_cache_entry_is_discarded_with_its_reason_and_recomputed(shapes_root, backbone, tmp_path,
                                                                           capsys, how, reason):
    cache = FeatureCache(tmp_path / "cache")
    spec = f"shapes:{shapes_root}@val"
    options = dict(model_id="ckpt-a", cache=cache, workers=0, progress=False)
    first = dataset_features(backbone, spec, eval_transform(32), CPU, **options)
    (path,) = (tmp_path / "cache").glob("*.pt")
    damage(path, how)
    capsys.readouterr()
    again = dataset_features(backbone, spec, eval_transform(32), CPU, **options)
    err = capsys.readouterr().err
    assert torch.equal(again.features, first.features) and torch.equal(again.labels, first.labels)
    assert err.count("\n") == 1 and f"feature cache: discarded {path} ({reason}" in err and "recomputing" in err
    assert cache.load(path.stem) is not None  # the recomputed features were written back


def test_a_bug_while_reading_the_cache_is_not_taken_for_a_bad_file(shapes_root, backbone, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache")
    spec = f"shapes:{shapes_root}@val"
    dataset_features(backbone, spec, eval_transform(32), CPU, model_id="ckpt-a", cache=cache, workers=0,
                     progress=False)

    def buggy_load(*args, **kwargs):
        raise NameError("a bug in our own code")

    monkeypatch.setattr(torch, "load", buggy_load)
    with pytest.raises(NameError, match="a bug in our own code"):
        dataset_features(backbone, spec, eval_transform(32), CPU, model_id="ckpt-a", cache=cache, workers=0)


def test_seeded_augmented_views_are_reproducible(shapes_root, backbone):
    spec = f"shapes:{shapes_root}@val"
    a, b, c = (dataset_features(backbone, spec, linear_train_transform(32), CPU, view_seed=seed, workers=w,
                                progress=False).features for seed, w in ((1, 0), (1, 2), (2, 0)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _extract_in_group(rank: int, world: int, root: str, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = build_backbone(read_checkpoint("random:resnet18:cifar:8"))
        dataset = Subset(open_dataset(f"shapes:{root}@val", eval_transform(32)), range(23))  # uneven split
        feats, labels = extract_features(model, dataset, CPU, batch_size=5, workers=0, progress=False)
        torch.save((feats, labels), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_extraction_gathers_every_row_in_order(shapes_root, backbone, tmp_path):
    dataset = Subset(open_dataset(f"shapes:{shapes_root}@val", eval_transform(32)), range(23))
    single = extract_features(backbone, dataset, CPU, workers=0, progress=False)
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_extract_in_group, args=(2, str(shapes_root), init, str(tmp_path / "f")), nprocs=2)
    for rank in range(2):
        feats, labels = torch.load(tmp_path / f"f.{rank}")
        assert torch.equal(labels, single[1]) and torch.allclose(feats, single[0], atol=1e-5)


def test_knn_monitor_on_a_training_encoder_caches_nothing(shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSIAM_EVAL_CACHE", str(tmp_path / "cache"))
    model = SimSiam("resnet18", dim=32, pred_dim=8, stem="cifar", width=8).train()
    knn_cfg = {"train": f"shapes:{shapes_root}@train", "val": f"shapes:{shapes_root}@val", "k": 20,
               "temperature": 0.1, "image_size": 32}
    result = run_knn_monitor(Pool5(model.encoder), knn_cfg, CPU, 32, workers=0)
    assert set(result) == {"knn_top1", "knn_top5", "knn_feature_std"}
    assert 0 <= result["knn_top1"] <= result["knn_top5"] <= 100
    assert model.training and all(m.training for m in model.modules())
    bank = open_dataset(knn_cfg["train"], evaluation_transform(32, knn_cfg["train"], knn_cfg["val"]))
    feats, _ = extract_features(Pool5(model.encoder).eval(), bank, CPU, workers=0, progress=False)
    model.train()
    unit = feats.double().numpy() / np.linalg.norm(feats.double().numpy(), axis=1, keepdims=True)  # the bank's spread
    assert result["knn_feature_std"] == pytest.approx(unit.std(axis=0, ddof=1).mean() * math.sqrt(unit.shape[1]),
                                                      rel=1e-6)
    assert not (tmp_path / "cache").exists() and not os.listdir(tmp_path)
    direct = run_knn_monitor(model.encoder, knn_cfg, CPU, 32, workers=0)  # a bare ResNet works too
    assert direct == result


def test_feature_std_worked_out_by_hand():
    """Rows (3,4), (3,4), (0,2) normalise to (.6,.8), (.6,.8), (0,1): channel stds (unbiased) sqrt(.12) and
    sqrt(.04/3), their mean x sqrt(2) = 0.326599; the rows' lengths do not matter."""
    bank = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.0, 2.0]])
    expected = (math.sqrt(0.12) + math.sqrt(0.04 / 3)) / 2 * math.sqrt(2)
    assert expected == pytest.approx(0.326599, abs=1e-6)
    for chunk in (1, 2, 65536):
        assert feature_std(bank, chunk_rows=chunk) == pytest.approx(expected, rel=1e-12)
    assert feature_std(bank * torch.tensor([[10.0], [0.5], [3.0]])) == pytest.approx(expected, rel=1e-12)


def test_feature_std_is_zero_for_a_collapsed_bank_and_matches_numpy():
    direction = torch.tensor([[1.0, 2.0, 0.5]])
    assert feature_std(direction * torch.tensor([[1.0], [2.0], [7.0], [0.1]])) == pytest.approx(0.0, abs=1e-7)
    bank = torch.rand(1000, 64, generator=torch.Generator().manual_seed(0))
    unit = bank.double().numpy() / np.linalg.norm(bank.double().numpy(), axis=1, keepdims=True)
    assert feature_std(bank, chunk_rows=300) == pytest.approx(unit.std(axis=0, ddof=1).mean() * 8, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 rows"):
        feature_std(bank[:1])
