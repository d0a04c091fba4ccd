"""``model.bn_heads``: where the MLP heads have BatchNorm, the paper's Table 3 variants."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pretrain.loss import simsiam_loss
from pretrain.model import SimSiam
from simsiam_eval.errors import UserError

SMALL = dict(arch="resnet18", dim=32, pred_dim=8, proj_layers=2, stem="cifar", width=8)
LINEAR, BN, RELU = "Linear", "BN", "ReLU"
BN_AFFINE_FREE = "BN(no affine)"


def layout(head: nn.Sequential) -> list[str]:
    names = []
    for layer in head:
        if isinstance(layer, nn.BatchNorm1d):
            names.append(BN if layer.affine else BN_AFFINE_FREE)
        else:
            names.append(type(layer).__name__)
    return names


# (projector, predictor) as the paper's Table 3 describes them, written out by hand
EXPECTED = {
    "none": ([LINEAR, RELU, LINEAR], [LINEAR, RELU, LINEAR]),
    "hidden": ([LINEAR, BN, RELU, LINEAR], [LINEAR, BN, RELU, LINEAR]),
    "hidden+output": ([LINEAR, BN, RELU, LINEAR, BN_AFFINE_FREE], [LINEAR, BN, RELU, LINEAR]),
    "all": ([LINEAR, BN, RELU, LINEAR, BN_AFFINE_FREE], [LINEAR, BN, RELU, LINEAR, BN_AFFINE_FREE]),
}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_each_variant_builds_the_layers_the_paper_describes(variant):
    model = SimSiam(**SMALL, bn_heads=variant)
    projector, predictor = EXPECTED[variant]
    assert layout(model.encoder.fc) == projector and layout(model.predictor) == predictor
    hidden_linears = [model.encoder.fc[0], model.predictor[0]]
    assert all((layer.bias is None) == (variant != "none") for layer in hidden_linears)  # BN makes a bias useless
    out_fc = [layer for layer in model.encoder.fc if isinstance(layer, nn.Linear)][-1]
    assert out_fc.bias.requires_grad == (variant in ("none", "hidden"))  # frozen only under an output BN
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    simsiam_loss(*model(x1, x2)).backward()  # trains
    assert model.encoder.conv1.weight.grad is not None


def test_the_default_is_the_official_model():
    default, explicit = SimSiam(**SMALL), SimSiam(**SMALL, bn_heads="hidden+output")
    assert list(default.state_dict()) == list(explicit.state_dict())


def test_an_unknown_variant_is_refused():
    with pytest.raises(UserError, match="model.bn_heads must be one of none, hidden, hidden\\+output, all"):
        SimSiam(**SMALL, bn_heads="output")
