"""The CPU SyncBN twin: two gloo processes give the statistics, gradients and training steps of one big batch."""

import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from pretrain.sync_bn import AllReduceBatchNorm, convert_sync_batchnorm
from pretrain.train import build_model_and_optimizer, seed_everything
from pretrain_loop import CPU, run_real_loop, tiny_config
from simsiam_eval.distributed import DistInfo


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bn_cls=nn.BatchNorm2d):
    bn = bn_cls(x.shape[1])
    bn.weight.data.copy_(weight)
    bn.bias.data.copy_(bias)
    x = x.clone().requires_grad_()
    out = bn(x)
    (out * torch.arange(out.numel()).reshape(out.shape).sin()).sum().backward()
    return out.detach(), x.grad, bn.weight.grad, bn.running_mean, bn.running_var


def _worker(rank: int, world: int, init_file: str, x, weight, bias, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(x.shape[1])), torch.device("cpu"))[0]
    bn.weight.data.copy_(weight)
    bn.bias.data.copy_(bias)
    part = x.chunk(world)[rank].clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = bn(part)
        full_weights = torch.arange(x.numel()).reshape(x.shape).sin().chunk(world)[rank]
        (out * full_weights).sum().backward()
    dist.all_reduce(bn.weight.grad)  # what DDP does with parameter gradients (sum; DDP then averages)
    results[rank] = (out.detach(), part.grad, bn.weight.grad, bn.running_mean.clone(), bn.running_var.clone(),
                     [f"{w.category.__name__}: {w.message}" for w in caught])
    dist.destroy_process_group()


def test_two_process_statistics_and_gradients_equal_one_big_batch(tmp_path):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(8, 3, 4, 4) * 3 + 1, torch.rand(3) + 0.5, torch.randn(3)
    expected = reference(x, weight, bias)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "init"), x, weight, bias, results), nprocs=2)
        got = [results[0], results[1]]
    out = torch.cat([got[0][0], got[1][0]])
    grad_x = torch.cat([got[0][1], got[1][1]])
    assert torch.allclose(out, expected[0], atol=1e-5)
    assert torch.allclose(grad_x, expected[1], atol=1e-5)
    assert torch.allclose(got[0][2], expected[2], atol=1e-4)
    for rank in (0, 1):
        assert torch.allclose(got[rank][3], expected[3], atol=1e-6)
        assert torch.allclose(got[rank][4], expected[4], atol=1e-5)
        assert got[rank][5] == []  # no warning (torch.distributed.nn.functional.all_reduce is deprecated)


def test_single_process_and_eval_behave_as_plain_batchnorm():
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6))
    converted = convert_sync_batchnorm(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)), torch.device("cpu"))
    converted.load_state_dict(plain.state_dict())
    assert isinstance(converted[1], AllReduceBatchNorm)
    x = torch.randn(7, 5)
    assert torch.allclose(plain(x), converted(x))
    assert converted.state_dict().keys() == plain.state_dict().keys()


def test_conversion_keeps_the_parameter_and_buffer_objects():
    """As nn.SyncBatchNorm.convert_sync_batchnorm: an optimiser built before the conversion still trains BN."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(4, affine=False))
    model[3].eval()
    originals = [model[1], model[3]]
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    for index, original in zip((1, 3), originals):
        new = converted[index]
        assert isinstance(new, AllReduceBatchNorm) and new.training == original.training
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert getattr(new, name) is getattr(original, name), name
    assert converted[1].weight is not None and converted[3].weight is None


TINY = ["optim.base_lr=3.2"]  # lr 0.1 at batch 8: BN weights move visibly
STEPS_PER_EPOCH, EPOCHS, BATCH = 2, 2, 8


def fixed_batches(rank: int, world: int) -> list:
    """Deterministic 32-px views; rank r gets the r-th slice, so the ranks' union is the 1-process batch."""
    g = torch.Generator().manual_seed(5)
    views = torch.randn(EPOCHS, STEPS_PER_EPOCH, 2, BATCH, 3, 32, 32, generator=g)
    labels = torch.zeros(BATCH // world, dtype=torch.long)
    return [[([v[0].chunk(world)[rank], v[1].chunk(world)[rank]], labels) for v in epoch] for epoch in views]


def _train_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = tiny_config(*TINY, f"batch_size={BATCH}", f"epochs={EPOCHS}")
    info = DistInfo(rank, world, rank, torch.device("cpu"))
    state, holds, _ = run_real_loop(cfg, info, fixed_batches(rank, world))
    torch.save({"state": state, "optimiser_holds_model": holds}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_train_exactly_like_one_process_with_the_whole_batch(tmp_path):
    """Defect 1 of issue 10: BN weights were left untrained by multi-process CPU pretraining."""
    torch.set_num_threads(1)
    cfg = tiny_config(*TINY, f"batch_size={BATCH}", f"epochs={EPOCHS}")
    expected, _, _ = run_real_loop(cfg, CPU, fixed_batches(0, 1))
    mp.spawn(_train_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    seed_everything(cfg.seed)
    initial = build_model_and_optimizer(cfg, CPU, 0.1)[0].state_dict()
    norms = [k[:-len(".running_mean")] for k in expected if k.endswith(".running_mean")]
    bn_affine = [f"{n}.{leaf}" for n in norms for leaf in ("weight", "bias") if f"{n}.{leaf}" in expected]
    assert len(bn_affine) == 46  # ResNet-18 (20 BN) + projector (2 affine BN) + predictor (1), weight and bias
    assert all(not torch.equal(expected[k], initial[k]) for k in bn_affine)  # the oracle does train BN
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["optimiser_holds_model"], "the optimiser holds parameters the model does not use"
        assert got["state"].keys() == expected.keys()
        diffs = {k: (got["state"][k].double() - expected[k].double()).abs().max().item() for k in expected}
        worst = max(diffs, key=diffs.get)
        assert diffs[worst] <= 1e-5, f"rank {rank}: {worst} differs by {diffs[worst]:.3g}"
