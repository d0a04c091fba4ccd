"""The checkpoint loader: official SimSiam / our pretrain layout, torchvision dicts, random specs, errors."""
from __future__ import annotations

import pickle

import pytest
import torch
from torchvision import models

from pretrain.model import SimSiam
from simsiam_eval.checkpoints import build_backbone, infer_spec, read_checkpoint
from simsiam_eval.errors import UserError
from simsiam_eval.models import build_resnet


def backbone_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.startswith("fc.")}


def assert_same(state: dict, reference: dict) -> None:
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def simsiam_checkpoint(path, arch="resnet18", ddp=True, **kwargs):
    """A checkpoint in the official main_simsiam.py layout, from the real SimSiam module structure."""
    torch.manual_seed(0)
    model = SimSiam(arch, dim=64, pred_dim=16, **kwargs)
    prefix = "module." if ddp else ""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 5, "arch": arch, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return model


@pytest.mark.parametrize("ddp", [True, False])
def test_simsiam_layout_with_and_without_module_prefix(tmp_path, ddp):
    model = simsiam_checkpoint(tmp_path / "ckpt.pth.tar", ddp=ddp)
    ckpt = read_checkpoint(tmp_path / "ckpt.pth.tar")
    assert (ckpt.arch, ckpt.stem, ckpt.width, ckpt.source_format) == ("resnet18", "imagenet", 64, "simsiam")
    assert_same(ckpt.state_dict, backbone_of(model.encoder))
    prefix = "module." if ddp else ""
    assert all(k.startswith((prefix + "encoder.fc.", prefix + "predictor.")) for k in ckpt.dropped)
    assert len(ckpt.found) == len(ckpt.state_dict)
    assert ckpt.metadata["epoch"] == 5 and len(ckpt.sha256) == 64
    assert ckpt.record()["epochs"] == 5  # the tables' "epochs" column


@pytest.mark.parametrize("arch,stem,width", [("resnet18", "cifar", 64), ("resnet18", "cifar", 32),
                                             ("resnet50", "cifar", 16), ("resnet34", "imagenet", 64)])
def test_our_cifar_variant_is_inferred_from_shapes(tmp_path, arch, stem, width):
    model = simsiam_checkpoint(tmp_path / "c.pth.tar", arch=arch, stem=stem, width=width)
    ckpt = read_checkpoint(tmp_path / "c.pth.tar")
    assert (ckpt.arch, ckpt.stem, ckpt.width) == (arch, stem, width)
    assert_same(ckpt.state_dict, backbone_of(model.encoder))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "wide_resnet50_2", "resnext50_32x4d"])
def test_torchvision_state_dict(tmp_path, arch):
    model = models.__dict__[arch]()
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    ckpt = read_checkpoint(tmp_path / "tv.pth")
    assert (ckpt.arch, ckpt.stem, ckpt.source_format) == (arch, "imagenet", "torchvision")
    assert_same(ckpt.state_dict, backbone_of(model))
    assert ckpt.dropped == ["fc.weight", "fc.bias"]


def test_build_backbone_gives_the_source_model_features(tmp_path):
    model = build_resnet("resnet18", stem="cifar", width=32).eval()
    torch.save(model.state_dict(), tmp_path / "m.pth")
    backbone = build_backbone(read_checkpoint(tmp_path / "m.pth"))
    assert not backbone.training
    x = torch.randn(2, 3, 32, 32)
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.equal(backbone(x), model(x))
    assert backbone(x).shape == (2, 256)


@pytest.mark.parametrize("spec,expected", [
    ("random:resnet18", ("resnet18", "imagenet", 64, 512)),
    ("random:resnet18:cifar", ("resnet18", "cifar", 64, 512)),
    ("random:resnet18:cifar:32", ("resnet18", "cifar", 32, 256)),
    ("random:resnet50", ("resnet50", "imagenet", 64, 2048)),
])
def test_random_spec(spec, expected):
    ckpt = read_checkpoint(spec)
    assert (ckpt.arch, ckpt.stem, ckpt.width, ckpt.feature_dim) == expected
    assert ckpt.source_format == "random"
    again = read_checkpoint(spec)
    assert ckpt.sha256 == again.sha256
    assert_same(again.state_dict, ckpt.state_dict)  # seeded: the same weights every time
    assert build_backbone(ckpt)(torch.randn(1, 3, 32, 32)).shape == (1, expected[3])


@pytest.mark.parametrize("spec", ["random:", "random:vit_b", "random:resnet18:tiny", "random:resnet18:cifar:x",
                                  "random:resnet50:imagenet:32"])
def test_bad_random_spec(spec):
    with pytest.raises(UserError, match="random"):
        read_checkpoint(spec)


def test_arch_mismatch_is_an_error_naming_the_file(tmp_path):
    simsiam_checkpoint(tmp_path / "r18.pth.tar")
    with pytest.raises(UserError, match=r"r18\.pth\.tar.*resnet18.*resnet50"):
        read_checkpoint(tmp_path / "r18.pth.tar", arch="resnet50")


def test_no_backbone_keys_lists_first_keys_and_formats_tried(tmp_path):
    torch.save({"state_dict": {"head.weight": torch.zeros(3), "head.bias": torch.zeros(3)}}, tmp_path / "h.pth")
    with pytest.raises(UserError) as err:
        read_checkpoint(tmp_path / "h.pth")
    message = str(err.value)
    assert "h.pth" in message and "head.weight" in message and "simsiam" in message and "moco" in message
    assert "\n" not in message


def test_missing_backbone_tensor_is_an_error(tmp_path):
    state = build_resnet("resnet18").state_dict()
    del state["layer3.1.conv2.weight"]
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(UserError, match="missing.*layer3.1.conv2.weight"):
        read_checkpoint(tmp_path / "m.pth")


@pytest.mark.parametrize("content", [b"", b"hello world, not a checkpoint", "truncated", "pickle-object"])
def test_garbage_files_give_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save(build_resnet("resnet18").state_dict(), path)
        path.write_bytes(path.read_bytes()[: 20000])
    elif content == "pickle-object":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert "bad.pth" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_checkpoint(tmp_path / "nope.pth")
    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "m.pth")
    with pytest.raises(UserError, match="unknown checkpoint format"):
        read_checkpoint(tmp_path / "m.pth", fmt="caffe")


def test_infer_spec_rejects_a_non_resnet_layout():
    with pytest.raises(UserError, match="no ResNet stem"):
        infer_spec({"patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)})
