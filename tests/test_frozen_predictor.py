"""``model.frozen_predictor``: the predictor stays at its random initialisation (SimSiam Table 1b)."""
from __future__ import annotations

import copy

import pytest
import torch

from pretrain.defaults import PRETRAIN_DEFAULTS
from pretrain.loss import simsiam_loss
from pretrain.model import SimSiam
from pretrain.schedule import build_optimizer
from pretrain.train import build_model_and_optimizer
from simsiam_eval.config import load_config
from simsiam_eval.distributed import DistInfo

SMALL = dict(arch="resnet18", dim=32, pred_dim=8, proj_layers=2, stem="cifar", width=8)


def train_steps(model: SimSiam, fix_pred_lr: bool, steps: int = 3) -> None:
    torch.manual_seed(0)
    optimizer = build_optimizer(model, 0.5, 0.9, 1e-4, fix_pred_lr)
    for _ in range(steps):
        x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
        loss = simsiam_loss(*model(x1, x2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("fix_pred_lr", [True, False])
def test_a_frozen_predictor_keeps_its_initial_weights_while_the_encoder_trains(fix_pred_lr):
    torch.manual_seed(1)
    model = SimSiam(**SMALL, frozen_predictor=True)
    before = copy.deepcopy(model.state_dict())
    train_steps(model, fix_pred_lr)
    after = model.state_dict()
    for name, value in model.predictor.named_parameters():
        assert value.grad is None, name  # no gradient reaches it
        assert torch.equal(after[f"predictor.{name}"], before[f"predictor.{name}"]), name
    assert not torch.equal(after["encoder.conv1.weight"], before["encoder.conv1.weight"])
    # the predictor's BatchNorm still normalises by the batch (its running statistics move)
    assert not torch.equal(after["predictor.1.running_mean"], before["predictor.1.running_mean"])


def test_the_default_predictor_trains():
    torch.manual_seed(1)
    model = SimSiam(**SMALL)
    before = copy.deepcopy(model.state_dict())
    train_steps(model, True)
    assert not torch.equal(model.state_dict()["predictor.0.weight"], before["predictor.0.weight"])


def test_the_config_key_reaches_model_and_optimiser():
    cfg = load_config("pretrain/shapes_cpu", PRETRAIN_DEFAULTS, ["model.frozen_predictor=true"])
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    model, optimizer = build_model_and_optimizer(cfg, info, 0.1)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised or p.requires_grad for p in model.predictor.parameters())
    assert all(id(p) in optimised for p in model.encoder.parameters())  # incl. the frozen projector bias, as official
