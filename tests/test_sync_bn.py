"""The CPU SyncBN twin: two gloo processes give the statistics and gradients of one big batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from pretrain.sync_bn import AllReduceBatchNorm, convert_sync_batchnorm


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
    out = bn(part)
    full_weights = torch.arange(x.numel()).reshape(x.shape).sin().chunk(world)[rank]
    (out * full_weights).sum().backward()
    dist.all_reduce(bn.weight.grad)  # what DDP does with parameter gradients (sum; DDP then averages)
    results[rank] = (out.detach(), part.grad, bn.weight.grad, bn.running_mean.clone(), bn.running_var.clone())
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


def test_single_process_and_eval_behave_as_plain_batchnorm():
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6))
    converted = convert_sync_batchnorm(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)), torch.device("cpu"))
    converted.load_state_dict(plain.state_dict())
    assert isinstance(converted[1], AllReduceBatchNorm)
    x = torch.randn(7, 5)
    assert torch.allclose(plain(x), converted(x))
    assert converted.state_dict().keys() == plain.state_dict().keys()
