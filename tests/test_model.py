import torch
import torch.nn as nn
from torchvision import models

from pretrain.model import SimSiam
from simsiam_eval.models import Pool5, build_resnet


def reference_keys(arch: str, dim: int = 2048, pred_dim: int = 512) -> dict[str, tuple]:
    """The official SimSiam module's state dict, written out from its documented layout."""
    backbone = models.__dict__[arch]()
    prev = backbone.fc.in_features
    keys = {f"encoder.{k}": tuple(v.shape) for k, v in backbone.state_dict().items() if not k.startswith("fc.")}

    def bn(prefix, n, affine=True):
        if affine:
            keys[f"{prefix}.weight"] = keys[f"{prefix}.bias"] = (n,)
        keys[f"{prefix}.running_mean"] = keys[f"{prefix}.running_var"] = (n,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["encoder.fc.0.weight"] = (prev, prev)
    bn("encoder.fc.1", prev)
    keys["encoder.fc.3.weight"] = (prev, prev)
    bn("encoder.fc.4", prev)
    keys["encoder.fc.6.weight"], keys["encoder.fc.6.bias"] = (dim, prev), (dim,)
    bn("encoder.fc.7", dim, affine=False)
    keys["predictor.0.weight"] = (pred_dim, dim)
    bn("predictor.1", pred_dim)
    keys["predictor.3.weight"], keys["predictor.3.bias"] = (dim, pred_dim), (dim,)
    return keys


def test_state_dict_equals_official_layout_resnet50_and_resnet18():
    for arch in ("resnet50", "resnet18"):
        model = SimSiam(arch)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert ours == reference_keys(arch)


def test_frozen_projector_bias_and_zero_init_residual():
    model = SimSiam("resnet50")
    assert model.encoder.fc[6].bias.requires_grad is False
    assert isinstance(model.encoder.fc[7], nn.BatchNorm1d) and not model.encoder.fc[7].affine
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for layer in
               (model.encoder.layer1, model.encoder.layer4) for block in layer)


def test_cifar_variant_stem_width_and_two_layer_projector():
    model = SimSiam("resnet18", dim=128, pred_dim=32, proj_layers=2, stem="cifar", width=16)
    conv1 = model.encoder.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.out_channels) == ((3, 3), (1, 1), 16)
    assert isinstance(model.encoder.maxpool, nn.Identity)
    assert [type(m) for m in model.encoder.fc] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert model.encoder.fc[0].in_features == 128  # 16 * 8 channels at pool5
    assert torch.count_nonzero(model.encoder.layer2[0].bn2.weight) == 0
    p1, p2, z1, z2 = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    assert p1.shape == z2.shape == (4, 128)


def test_cifar_width_64_matches_torchvision_names_and_shapes_except_stem():
    ours = build_resnet("resnet18", stem="cifar").state_dict()
    theirs = models.resnet18().state_dict()
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if ours[k].shape != theirs[k].shape] == ["conv1.weight"]


def test_pool5_view_returns_pooled_features():
    backbone = build_resnet("resnet18")
    backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    reference = nn.Sequential(*list(backbone.children())[:-1])(x).flatten(1)
    assert torch.equal(Pool5(backbone)(x), reference)


def test_no_predictor_ablation():
    model = SimSiam("resnet18", dim=64, pred_dim=16, proj_layers=2, stem="cifar", width=8, predictor=False)
    assert not any(k.startswith("predictor.") for k in model.state_dict())
    p1, _, z1, _ = model.eval()(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert torch.equal(p1, z1)
