"""Every reader: a checkpoint built in the test in that source's exact layout, from real module structures,
converts to torchvision weights identical to the backbone it was built from."""
from __future__ import annotations

import argparse
import pickle
from typing import Callable

import pytest
import torch
import torch.nn as nn
from moco_reference import moco_detectron2_rename
from torchvision import models

from pretrain.model import SimSiam
from simsiam_eval.checkpoints import FORMAT_NAMES, detect_format, read_checkpoint
from simsiam_eval.checkpoints.convert import convert_checkpoint
from simsiam_eval.errors import UserError


def backbone_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.startswith("fc.")}


def ddp(state: dict) -> dict:
    """What DistributedDataParallel's state_dict() adds."""
    return {f"module.{k}": v for k, v in state.items()}


def mlp(*dims: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers[:-2])


def shuffle_weights(module: nn.Module) -> nn.Module:
    """Non-default BN statistics, so that a reader mixing up tensors would be caught."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor).abs() + 0.1 if "running_var" in name else torch.randn_like(tensor))
            else:
                tensor.fill_(7)
    return module


# ------------------------------------------------------------------ the source layouts, from module structures
def make_simsiam(path):
    """facebookresearch/simsiam main_simsiam.py: DDP(SimSiam) -> module.encoder.*, module.predictor.*"""
    model = shuffle_weights(SimSiam("resnet18", dim=64, pred_dim=16))
    torch.save({"epoch": 10, "arch": "resnet18", "state_dict": ddp(model.state_dict()), "optimizer": {}}, path)
    return backbone_of(model.encoder)


class MoCo(nn.Module):
    """moco/builder.py (v2, --mlp): encoder_q/encoder_k with an MLP fc, queue and queue_ptr buffers."""

    def __init__(self, dim=32, K=64):
        super().__init__()
        self.encoder_q, self.encoder_k = models.resnet18(num_classes=dim), models.resnet18(num_classes=dim)
        for encoder in (self.encoder_q, self.encoder_k):
            dim_mlp = encoder.fc.weight.shape[1]
            encoder.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), encoder.fc)
        self.register_buffer("queue", torch.randn(dim, K))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


def make_moco(path):
    model = shuffle_weights(MoCo())
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": ddp(model.state_dict()), "optimizer": {}}, path)
    return backbone_of(model.encoder_q)


class MoCoV3ResNet(nn.Module):
    """moco-v3/moco/builder.py MoCo_ResNet: base/momentum encoders with MLP fc, and a predictor."""

    def __init__(self):
        super().__init__()
        self.base_encoder, self.momentum_encoder = models.resnet18(), models.resnet18()
        for encoder in (self.base_encoder, self.momentum_encoder):
            encoder.fc = mlp(512, 128, 32)
        self.predictor = mlp(32, 128, 32)


def make_mocov3(path):
    model = shuffle_weights(MoCoV3ResNet())
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": ddp(model.state_dict()), "optimizer": {},
                "scaler": {}}, path)
    return backbone_of(model.base_encoder)


class MultiCropWrapper(nn.Module):
    """dino/utils.py MultiCropWrapper: backbone (fc, head = Identity) + DINOHead."""

    def __init__(self):
        super().__init__()
        self.backbone = models.resnet18()
        self.backbone.fc = nn.Identity()
        self.head = mlp(512, 64, 16)


def make_dino(path):
    student, teacher = shuffle_weights(MultiCropWrapper()), shuffle_weights(MultiCropWrapper())
    torch.save({"student": ddp(student.state_dict()), "teacher": ddp(teacher.state_dict()), "optimizer": {},
                "epoch": 100, "args": argparse.Namespace(arch="resnet50", out_dim=65536),
                "dino_loss": {"center": torch.zeros(1, 16)}}, path)
    return backbone_of(teacher.backbone)


class SwAVResNet(nn.Module):
    """swav/src/resnet50.py: torchvision names plus projection_head and prototypes in the same module."""

    def __init__(self):
        super().__init__()
        net = models.resnet18()
        for name in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.projection_head = mlp(512, 64, 16)
        self.prototypes = nn.Linear(16, 30, bias=False)


def make_swav(path):
    model = shuffle_weights(SwAVResNet())
    torch.save({"epoch": 800, "state_dict": ddp(model.state_dict()), "optimizer": {}}, path)
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("projection_head.", "prototypes."))}


class BarlowTwins(nn.Module):
    """barlowtwins/main.py: backbone (fc = Identity), projector, bn (affine=False); VICReg has the same shape."""

    def __init__(self):
        super().__init__()
        self.backbone = models.resnet18(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        self.projector = mlp(512, 64, 64)
        self.bn = nn.BatchNorm1d(64, affine=False)


def make_barlowtwins(path):
    model = shuffle_weights(BarlowTwins())
    torch.save({"epoch": 1000, "model": ddp(model.state_dict()), "optimizer": {}}, path)
    return backbone_of(model.backbone)


def solo_learn_resnet18(cifar: bool) -> nn.Module:
    """solo-learn's backbone (solo/methods/base.py): torchvision's resnet18, fc = Identity; for CIFAR data a
    3x3 stride-1 conv1 padded by 2 and no max-pool."""
    net = models.resnet18()
    if cifar:
        net.conv1, net.maxpool = nn.Conv2d(3, 64, 3, stride=1, padding=2, bias=False), nn.Identity()
    net.fc = nn.Identity()
    return net


def make_solo_learn(path, cifar: bool = False):
    """solo-learn: LightningModule with backbone, projector, classifier, momentum_backbone; saved by Lightning's
    ModelCheckpoint."""
    backbone = shuffle_weights(solo_learn_resnet18(cifar))
    module = nn.Module()
    module.backbone, module.projector, module.classifier = backbone, mlp(512, 64, 32), nn.Linear(512, 10)
    module.momentum_backbone = shuffle_weights(solo_learn_resnet18(cifar))
    torch.save({"epoch": 999, "global_step": 97000, "pytorch-lightning_version": "2.0.0",
                "state_dict": module.state_dict(), "optimizer_states": [], "lr_schedulers": [],
                "hyper_parameters": {"cfg": {"method": "byol"}}}, path)
    return backbone_of(backbone)


def make_vissl(path):
    """vissl: classy_state_dict -> base_model -> model -> trunk (``_feature_blocks.`` + torchvision names) / heads."""
    net = shuffle_weights(models.resnet18())
    trunk = {f"_feature_blocks.{k}": v for k, v in backbone_of(net).items()}
    heads = {f"0.clf.{k}": v for k, v in mlp(512, 64, 16).state_dict().items()}
    torch.save({"phase_idx": 3, "iteration": 1000, "type": "checkpoint",
                "classy_state_dict": {"train": True, "base_model": {"model": {"trunk": trunk, "heads": heads},
                                                                    "meta": {"model_version": 1}},
                                      "loss": {}, "optimizer": {}}}, path)
    return backbone_of(net)


def make_timm(path):
    """timm's train.py CheckpointSaver: {epoch, arch, state_dict, optimizer, version, args, state_dict_ema}.
    Built with timm itself (a torchvision stand-in would pass whatever timm's names are)."""
    timm = pytest.importorskip("timm", reason="timm is not installed: the timm layout needs timm's own model "
                                              "(pip install -e '.[test]')")
    net = shuffle_weights(timm.create_model("resnet18", num_classes=10))
    ema = shuffle_weights(timm.create_model("resnet18", num_classes=10))
    torch.save({"epoch": 300, "arch": "resnet18", "state_dict": net.state_dict(), "optimizer": {}, "version": 2,
                "args": argparse.Namespace(model="resnet18"), "metric": 70.1,
                "state_dict_ema": ema.state_dict()}, path)
    return backbone_of(net)


def make_torchvision(path):
    net = shuffle_weights(models.resnet18())
    torch.save(net.state_dict(), path)
    return backbone_of(net)


def make_detectron2(path):
    """A .pkl written by MoCo's converter (from a MoCo v2 checkpoint; its fc is left in as stem.fc.*)."""
    net = shuffle_weights(models.resnet18())
    model = {moco_detectron2_rename(k): v.numpy() for k, v in net.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "MOCO", "matching_heuristics": True}, f)
    return backbone_of(net)


BUILDERS: dict[str, tuple[str, Callable]] = {  # format -> (source file name, builder)
    "simsiam": ("checkpoint_0009.pth.tar", make_simsiam),
    "moco": ("moco_v2_200ep.pth.tar", make_moco),
    "mocov3": ("r-50-100ep.pth.tar", make_mocov3),
    "dino": ("checkpoint.pth", make_dino),
    "plain": ("swav_800ep.pth.tar", make_swav),
    "solo-learn": ("byol-cifar10.ckpt", make_solo_learn),
    "vissl": ("model_final_checkpoint_phase3.torch", make_vissl),
    "timm": ("model_best.pth.tar", make_timm),
    "torchvision": ("resnet18.pth", make_torchvision),
    "detectron2": ("moco_r18.pkl", make_detectron2),
}
EXTRA = {"barlowtwins/vicreg": ("plain", "checkpoint.pth", make_barlowtwins)}


def test_every_format_has_a_test_layout():
    assert set(BUILDERS) == set(FORMAT_NAMES)


CASES = [(fmt, name, build) for fmt, (name, build) in BUILDERS.items()] + list(EXTRA.values())


@pytest.mark.parametrize("fmt,name,build", CASES, ids=[f"{c}-layout" for c in [*BUILDERS, *EXTRA]])
def test_reader_recovers_the_backbone_it_was_built_from(tmp_path, fmt, name, build):
    source = tmp_path / name
    reference = build(source)
    ckpt = read_checkpoint(source)
    assert ckpt.source_format == fmt                          # detected from the key layout
    assert ckpt.arch == "resnet18"
    assert set(ckpt.state_dict) == set(reference)
    for key, value in reference.items():
        assert torch.equal(ckpt.state_dict[key], value), key
    forced = read_checkpoint(source, fmt=fmt)                 # --from gives the same result
    assert all(torch.equal(forced.state_dict[k], v) for k, v in ckpt.state_dict.items())

    out = tmp_path / "out.pth"
    convert_checkpoint(source, out, "torchvision")
    written = torch.load(out, weights_only=True)
    assert set(written) == set(reference)
    assert all(torch.equal(written[k], v) for k, v in reference.items())


def test_dropped_parts_are_named(tmp_path):
    make_moco(tmp_path / "m.pth.tar")
    ckpt = read_checkpoint(tmp_path / "m.pth.tar")
    assert set(ckpt.dropped_groups) == {"module.encoder_q.fc.*", "module.encoder_k.*", "module.queue", "module.queue_ptr"}
    make_dino(tmp_path / "d.pth")
    groups = set(read_checkpoint(tmp_path / "d.pth").dropped_groups)
    assert groups == {"teacher.module.head.*", "student.module.backbone.*",
                      "student.module.head.*"}


def test_solo_learn_cifar_stem_is_inferred(tmp_path):
    make_solo_learn(tmp_path / "s.ckpt", cifar=True)
    ckpt = read_checkpoint(tmp_path / "s.ckpt")
    assert (ckpt.stem, ckpt.width) == ("cifar-pad2", 64)


@pytest.mark.parametrize("target,output", [("detectron2", "s.pkl"), ("torchvision", "s.pth"), ("timm", "s_timm.pth"),
                                           ("safetensors", "s.safetensors")])
def test_solo_learn_cifar_stem_is_not_written_where_its_padding_would_be_lost(tmp_path, target, output):
    """No target format records conv1's padding: a file read back would build a padding-1 stem."""
    make_solo_learn(tmp_path / "s.ckpt", cifar=True)
    with pytest.raises(UserError) as err:
        convert_checkpoint(tmp_path / "s.ckpt", tmp_path / output, target)
    assert "s.ckpt" in str(err.value) and "padding 2" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / output).exists()


def test_detectron2_trained_model_layout(tmp_path):
    """A Detectron2 R-C4 model_final: backbone.bottom_up.{stem,res2..res4} and roi_heads.res5."""
    net = shuffle_weights(models.resnet18())
    model = {}
    for key, value in backbone_of(net).items():
        name = moco_detectron2_rename(key)
        model[("roi_heads." if name.startswith("res5.") else "backbone.bottom_up.") + name] = value
    model["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(21, 512)
    torch.save({"model": model, "iteration": 24000}, tmp_path / "model_final.pth")
    ckpt = read_checkpoint(tmp_path / "model_final.pth")
    assert ckpt.source_format == "detectron2"
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in backbone_of(net).items())
    assert ckpt.dropped == ["roi_heads.box_predictor.cls_score.weight"]


def test_detect_format_returns_none_for_unknown_layouts():
    assert detect_format({"cls_token": torch.zeros(1), "pos_embed": torch.zeros(1)}) is None
    assert detect_format([1, 2]) is None


def test_solo_learn_cifar_backbone_gives_solo_learns_features(tmp_path):
    """The backbone built from a solo-learn CIFAR checkpoint computes solo-learn's features (its conv1 pads by 2;
    tools/parity/checkpoint_sources.py measured 1.13 while ours padded by 1)."""
    from simsiam_eval.checkpoints import build_backbone

    torch.manual_seed(0)
    net = solo_learn_resnet18(cifar=True).eval()
    torch.save({"epoch": 999, "global_step": 97000, "pytorch-lightning_version": "2.1.2",
                "state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "s.ckpt")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = build_backbone(read_checkpoint(tmp_path / "s.ckpt"))(x), net(x)
    assert (ours - theirs).abs().max().item() <= 1e-5
