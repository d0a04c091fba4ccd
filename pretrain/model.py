"""The SimSiam module, with the parameter names of the official ``simsiam.builder.SimSiam``."""
from __future__ import annotations

import torch
import torch.nn as nn

from simsiam_eval.models import build_resnet


def build_projector(in_dim: int, out_fc: nn.Linear, num_layers: int) -> nn.Sequential:
    """``num_layers - 1`` x (Linear-BN-ReLU), then ``out_fc`` and an affine-free BN (bias of out_fc frozen)."""
    if num_layers < 1:
        raise ValueError("the projector needs at least one layer")
    layers: list[nn.Module] = []
    for _ in range(num_layers - 1):
        layers += [nn.Linear(in_dim, in_dim, bias=False), nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True)]
    out_fc.bias.requires_grad = False  # followed by BN: the bias would have no effect
    layers += [out_fc, nn.BatchNorm1d(out_fc.out_features, affine=False)]
    return nn.Sequential(*layers)


def build_predictor(dim: int, pred_dim: int) -> nn.Sequential:
    """Bottleneck MLP h: Linear-BN-ReLU-Linear."""
    return nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                         nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))


class SimSiam(nn.Module):
    """Encoder f (backbone + projector in ``encoder.fc``) and predictor h.

    ``forward(x1, x2)`` returns ``(p1, p2, z1, z2)``; z is not detached here, so that the
    loss decides about the stop-gradient (the no-stop-gradient ablation needs it attached).
    """

    def __init__(self, arch: str = "resnet50", dim: int = 2048, pred_dim: int = 512, proj_layers: int = 3,
                 stem: str = "imagenet", width: int = 64, predictor: bool = True,
                 frozen_predictor: bool = False) -> None:
        """``frozen_predictor``: the predictor's weights stay at their random initialisation (no
        gradient, no optimiser update; its BatchNorm still normalises by the batch), paper Table 1b."""
        super().__init__()
        self.encoder = build_resnet(arch, stem=stem, width=width, num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        self.encoder.fc = build_projector(prev_dim, self.encoder.fc, proj_layers)
        self.predictor = build_predictor(dim, pred_dim) if predictor else nn.Identity()
        self.predictor.requires_grad_(not frozen_predictor)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        z1, z2 = self.encoder(x1), self.encoder(x2)
        return self.predictor(z1), self.predictor(z2), z1, z2


def build_model(model_cfg) -> SimSiam:
    """SimSiam from the ``model`` section of a pretrain config."""
    return SimSiam(arch=model_cfg["arch"], dim=model_cfg["dim"], pred_dim=model_cfg["pred_dim"],
                   proj_layers=model_cfg["proj_layers"], stem=model_cfg["stem"], width=model_cfg["width"],
                   predictor=model_cfg["predictor"], frozen_predictor=model_cfg["frozen_predictor"])
