"""The SimSiam module, with the parameter names of the official ``simsiam.builder.SimSiam``."""
from __future__ import annotations

import torch
import torch.nn as nn

from simsiam_eval.errors import UserError
from simsiam_eval.models import build_resnet


# Where the MLP heads have BatchNorm (the paper's Table 3): none; the hidden layers; the hidden layers and
# the projector's output (the default, the official model); all of those and the predictor's output.
BN_HEADS = ("none", "hidden", "hidden+output", "all")


def _hidden(in_dim: int, out_dim: int, bn: bool) -> list[nn.Module]:
    """Linear-BN-ReLU (the Linear without bias, which BN would cancel), or Linear-ReLU."""
    if bn:
        return [nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True)]
    return [nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True)]


def build_projector(in_dim: int, out_fc: nn.Linear, num_layers: int, bn_heads: str = "hidden+output") -> nn.Sequential:
    """``num_layers - 1`` hidden layers, then ``out_fc`` and (by default) an affine-free BN, which makes
    out_fc's bias useless: it is frozen, as in the official model."""
    if num_layers < 1:
        raise ValueError("the projector needs at least one layer")
    layers: list[nn.Module] = []
    for _ in range(num_layers - 1):
        layers += _hidden(in_dim, in_dim, bn_heads != "none")
    layers.append(out_fc)
    if bn_heads in ("hidden+output", "all"):
        out_fc.bias.requires_grad = False
        layers.append(nn.BatchNorm1d(out_fc.out_features, affine=False))
    return nn.Sequential(*layers)


def build_predictor(dim: int, pred_dim: int, bn_heads: str = "hidden+output") -> nn.Sequential:
    """Bottleneck MLP h: Linear-BN-ReLU-Linear (``all``: and an affine-free BN on its output)."""
    layers = _hidden(dim, pred_dim, bn_heads != "none") + [nn.Linear(pred_dim, dim)]
    if bn_heads == "all":
        layers.append(nn.BatchNorm1d(dim, affine=False))
    return nn.Sequential(*layers)


class SimSiam(nn.Module):
    """Encoder f (backbone + projector in ``encoder.fc``) and predictor h.

    ``forward(x1, x2)`` returns ``(p1, p2, z1, z2)`` (any number of views: every p, then every z);
    z is not detached here, so that the loss decides about the stop-gradient (the
    no-stop-gradient ablation needs it attached). Each view is its own batch for BatchNorm.
    """

    def __init__(self, arch: str = "resnet50", dim: int = 2048, pred_dim: int = 512, proj_layers: int = 3,
                 stem: str = "imagenet", width: int = 64, predictor: bool = True,
                 frozen_predictor: bool = False, bn_heads: str = "hidden+output") -> None:
        """``frozen_predictor``: the predictor's weights stay at their random initialisation (no
        gradient, no optimiser update; its BatchNorm still normalises by the batch), paper Table 1b.
        ``bn_heads``: where the heads have BatchNorm (:data:`BN_HEADS`), paper Table 3."""
        super().__init__()
        if bn_heads not in BN_HEADS:
            raise UserError(f"model.bn_heads must be one of {', '.join(BN_HEADS)}, got {bn_heads!r}")
        self.encoder = build_resnet(arch, stem=stem, width=width, num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        self.encoder.fc = build_projector(prev_dim, self.encoder.fc, proj_layers, bn_heads)
        self.predictor = build_predictor(dim, pred_dim, bn_heads) if predictor else nn.Identity()
        self.predictor.requires_grad_(not frozen_predictor)

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zs = [self.encoder(view) for view in views]
        return (*[self.predictor(z) for z in zs], *zs)


def build_model(model_cfg) -> SimSiam:
    """SimSiam from the ``model`` section of a pretrain config."""
    return SimSiam(arch=model_cfg["arch"], dim=model_cfg["dim"], pred_dim=model_cfg["pred_dim"],
                   proj_layers=model_cfg["proj_layers"], stem=model_cfg["stem"], width=model_cfg["width"],
                   predictor=model_cfg["predictor"], frozen_predictor=model_cfg["frozen_predictor"],
                   bn_heads=model_cfg["bn_heads"])
