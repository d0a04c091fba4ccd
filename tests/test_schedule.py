"""pretrain/schedule.py against numbers worked out by hand, and the optimiser's parameter groups.

main_simsiam.py: init_lr = 0.05 x batch / 256; each epoch e of E sets lr = init_lr x 0.5 (1 + cos(pi e / E))
on every group except those marked ``fix_lr`` (--fix-pred-lr: the predictor), which keep init_lr. Its
groups are ``model.encoder.parameters()`` and ``model.predictor.parameters()``: every parameter once,
the frozen projector bias (requires_grad False) included in the encoder group. The cosine values below
are written out from cos(pi/100) = 0.99950656036573, cos(pi/90) = cos(2 deg) = 0.99939082701910,
cos(pi/4) = sqrt(2)/2, cos(pi/3) = 1/2, cos(2 pi/3) = -1/2.
"""
import pytest
import torch

from pretrain.loss import simsiam_loss
from pretrain.model import SimSiam
from pretrain.schedule import build_optimizer, lr_at_epoch, scaled_lr, set_epoch_lr
from simsiam_eval.errors import UserError

INIT_LR = 0.1
# epoch of a 100-epoch run -> 0.1 x 0.5 (1 + cos(pi e / 100))
COSINE_100 = {0: 0.1,
              1: 0.09997532801828658,      # 0.05 (1 + cos(pi/100))
              25: 0.08535533905932738,     # 0.05 + 0.025 sqrt(2)
              50: 0.05,                    # cos(pi/2) = 0
              75: 0.014644660940672624,    # 0.05 - 0.025 sqrt(2)
              99: 2.467198171342215e-05}   # 0.05 (1 - cos(pi/100))
# 10 warm-up epochs (lr x (e + 1) / 10), then the cosine over the remaining 90 epochs
WARMUP_10_OF_100 = {0: 0.01, 4: 0.05, 9: 0.1,
                    10: 0.1,                     # first cosine epoch: progress 0
                    40: 0.075,                   # progress 30/90 = 1/3: 0.05 (1 + 1/2)
                    55: 0.05,                    # progress 45/90 = 1/2
                    70: 0.025,                   # progress 60/90 = 2/3: 0.05 (1 - 1/2)
                    99: 3.0458649045213500e-05}  # progress 89/90: 0.05 (1 - cos(pi/90))


def tiny_simsiam(**kwargs) -> SimSiam:
    return SimSiam("resnet18", dim=16, pred_dim=4, proj_layers=3, stem="cifar", width=8, **kwargs)


def test_linear_scaling_rule():
    assert scaled_lr(0.05, 512) == pytest.approx(0.1)        # official ImageNet default
    assert scaled_lr(0.03, 512) == pytest.approx(0.06)       # appendix D (CIFAR)
    assert scaled_lr(0.05, 8) == pytest.approx(0.0015625)


@pytest.mark.parametrize("epoch", sorted(COSINE_100))
def test_cosine_per_epoch(epoch):
    assert lr_at_epoch(INIT_LR, epoch, 100) == pytest.approx(COSINE_100[epoch], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("epoch", sorted(WARMUP_10_OF_100))
def test_linear_warmup_then_cosine(epoch):
    assert lr_at_epoch(INIT_LR, epoch, 100, warmup_epochs=10) == pytest.approx(WARMUP_10_OF_100[epoch], rel=1e-12)


def test_fix_pred_lr_keeps_the_predictor_at_the_initial_lr():
    optimizer = build_optimizer(tiny_simsiam(), INIT_LR, momentum=0.9, weight_decay=1e-4, fix_pred_lr=True)
    for epoch, expected in COSINE_100.items():
        returned = set_epoch_lr(optimizer, INIT_LR, epoch, 100)
        encoder, predictor = optimizer.param_groups
        assert returned == pytest.approx(expected, rel=1e-12)
        assert encoder["lr"] == pytest.approx(expected, rel=1e-12)
        assert predictor["lr"] == 0.1


def test_without_fix_pred_lr_one_group_decays():
    optimizer = build_optimizer(tiny_simsiam(), INIT_LR, momentum=0.9, weight_decay=1e-4, fix_pred_lr=False)
    assert len(optimizer.param_groups) == 1
    set_epoch_lr(optimizer, INIT_LR, 50, 100)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def group_names(model, optimizer) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def test_groups_hold_every_parameter_once_like_the_official_encoder_and_predictor_groups():
    model = tiny_simsiam()
    optimizer = build_optimizer(model, INIT_LR, momentum=0.9, weight_decay=1e-4, fix_pred_lr=True)
    encoder, predictor = group_names(model, optimizer)
    all_names = [n for n, _ in model.named_parameters()]
    assert encoder + predictor == all_names  # each parameter exactly once, in module order
    assert all(n.startswith("encoder.") for n in encoder) and all(n.startswith("predictor.") for n in predictor)
    assert predictor == ["predictor.0.weight", "predictor.1.weight", "predictor.1.bias",
                         "predictor.3.weight", "predictor.3.bias"]
    assert "encoder.fc.6.bias" in encoder and not model.encoder.fc[6].bias.requires_grad
    assert [g["fix_lr"] for g in optimizer.param_groups] == [False, True]
    assert all((g["momentum"], g["weight_decay"]) == (0.9, 1e-4) for g in optimizer.param_groups)
    single = build_optimizer(model, INIT_LR, momentum=0.9, weight_decay=1e-4, fix_pred_lr=False)
    assert group_names(model, single) == [all_names]


def test_the_frozen_projector_bias_is_grouped_but_never_updated():
    torch.manual_seed(0)
    model = tiny_simsiam()
    frozen = model.encoder.fc[6].bias
    frozen.data.uniform_(-1, 1)  # non-zero, so that weight decay would show if it were applied
    before, weight_before = frozen.detach().clone(), model.encoder.fc[6].weight.detach().clone()
    optimizer = build_optimizer(model, INIT_LR, momentum=0.9, weight_decay=1e-4, fix_pred_lr=True)
    for _ in range(2):
        p1, p2, z1, z2 = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
        optimizer.zero_grad()
        simsiam_loss(p1, p2, z1, z2).backward()
        optimizer.step()
    assert frozen.grad is None and torch.equal(frozen, before)
    assert not torch.equal(model.encoder.fc[6].weight, weight_before)  # the layer itself did train


def test_no_predictor_ablation_has_one_group():
    model = tiny_simsiam(predictor=False)
    optimizer = build_optimizer(model, INIT_LR, momentum=0.9, weight_decay=1e-4, fix_pred_lr=True)
    assert group_names(model, optimizer) == [[n for n, _ in model.named_parameters()]]
    assert optimizer.param_groups[0]["fix_lr"] is False


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_weight_decay_on_norm_and_bias_parameters_is_a_switch(decay_norm_and_bias):
    """One SGD step on zero gradients: p <- p - lr wd p for decayed parameters (worked out: x 0.9 at lr 1,
    wd 0.1); with decay_norm_and_bias=False the BatchNorm gammas/betas and biases stay as they are."""
    model = tiny_simsiam()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
        p.data.fill_(1.0)
    optimizer = build_optimizer(model, 1.0, momentum=0.9, weight_decay=0.1, fix_pred_lr=True,
                                decay_norm_and_bias=decay_norm_and_bias)
    official = build_optimizer(model, 1.0, momentum=0.9, weight_decay=0.1, fix_pred_lr=True)
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for g in official.param_groups for p in g["params"])  # each once
    optimizer.step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            expected = 0.9 if p.ndim > 1 or decay_norm_and_bias else 1.0
            assert torch.allclose(p, torch.full_like(p, expected)), name
    assert {g["fix_lr"] for g in optimizer.param_groups} == {False, True}  # the predictor keeps its own lr


@pytest.mark.parametrize("epoch, expected", [(0, 0.1), (50, 0.1), (99, 0.1)])
def test_constant_schedule_keeps_the_initial_lr(epoch, expected):
    """optim.schedule=constant (a deviation for the collapse experiments): no decay at all."""
    assert lr_at_epoch(INIT_LR, epoch, 100, schedule="constant") == expected


@pytest.mark.parametrize("epoch, expected", [(0, 0.01), (4, 0.05), (9, 0.1), (10, 0.1), (99, 0.1)])
def test_constant_schedule_after_warmup(epoch, expected):
    assert lr_at_epoch(INIT_LR, epoch, 100, warmup_epochs=10, schedule="constant") == pytest.approx(expected, rel=1e-12)


def test_constant_schedule_sets_every_group():
    optimizer = build_optimizer(tiny_simsiam(), INIT_LR, momentum=0.9, weight_decay=1e-4, fix_pred_lr=False)
    assert set_epoch_lr(optimizer, INIT_LR, 75, 100, schedule="constant") == 0.1
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_unknown_schedule_is_refused():
    with pytest.raises(UserError, match="optim.schedule must be one of cosine, constant, got 'step'"):
        lr_at_epoch(INIT_LR, 0, 100, schedule="step")
