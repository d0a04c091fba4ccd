"""Detection transfer of small ResNets (BasicBlock stages, CIFAR stem, any width): the demo's path.

Skipped, with the reason, where Detectron2 is missing. A CIFAR-stem ResNet-18 of width 16 is converted
to Detectron2, loaded into the smoke config's detector tensor by tensor, compared with torchvision's
forward pass, and fine-tuned for a few iterations.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from simsiam_eval.checkpoints.convert import convert_checkpoint
from simsiam_eval.checkpoints.renaming import detectron2_to_torchvision
from simsiam_eval.errors import UserError
from simsiam_eval.models import build_resnet
from transfer.configs import config_dir
from transfer.verify import LIBRARY_CHECKS

pytestmark = pytest.mark.detectron2

SMOKE_R18 = "smoke/faster_rcnn_shapes_voc_r18_cifar.yaml"
PIXEL_MEAN, PIXEL_STD = [123.675, 116.280, 103.530], [58.395, 57.120, 57.375]


def cifar_resnet18(width: int = 16) -> dict[str, torch.Tensor]:
    """A CIFAR-stem ResNet-18 backbone with non-trivial BN statistics and affine parameters."""
    torch.manual_seed(0)
    net = build_resnet("resnet18", stem="cifar", width=width)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if "num_batches_tracked" in name:
                continue
            if "running_var" in name:
                tensor.uniform_(0.5, 2.0)
            elif "running_mean" in name or "bn" in name or "downsample.1" in name:
                tensor.normal_(0, 0.5 if "running_mean" in name else 1.0)
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def r18_cifar(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("r18")
    state = cifar_resnet18()
    torch.save(state, folder / "r18_cifar16.pth")
    convert_checkpoint(folder / "r18_cifar16.pth", folder / "r18_cifar16.pkl", library_checks=LIBRARY_CHECKS)
    return folder / "r18_cifar16.pth", state


def smoke_config(*opts: str):
    from transfer.trainer import build_config

    return build_config(str(config_dir() / SMOKE_R18), ["MODEL.DEVICE", "cpu", *opts])


def test_cifar_r18_fills_every_backbone_tensor_and_res4_equals_torchvision(r18_cifar):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from transfer.trainer import check_detector_weights

    source, state = r18_cifar
    weights = str(source.with_suffix(".pkl"))
    model = build_model(smoke_config()).eval()
    match = check_detector_weights(model, weights)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert match.complete and len(state) == 120 and len(match.matched) == len(state) - len(counters) == 100
    assert match.fresh == ["proposal_generator", "roi_heads.box_predictor", "roi_heads.res5.norm"]
    DetectionCheckpointer(model).load(weights)

    matched = 0
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            name = detectron2_to_torchvision(key[len("backbone."):])
        elif key.startswith("roi_heads.res5.") and not key.startswith("roi_heads.res5.norm."):
            name = detectron2_to_torchvision(key)
        else:
            continue
        assert torch.equal(value, state[name]), key
        matched += 1
    assert matched == len(state)  # no backbone tensor missing, none left over

    net = build_resnet("resnet18", stem="cifar", width=16)
    net.load_state_dict(state, strict=False)
    net.eval()
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        x = model.preprocess_image([{"image": image}]).tensor
        res4 = model.backbone(x)["res4"]
        want4 = net.layer3(net.layer2(net.layer1(net.relu(net.bn1(net.conv1(x))))))
        res5 = res4
        for name, block in model.roi_heads.res5.named_children():
            if name != "norm":
                res5 = block(res5)
        want5 = net.layer4(want4)
    assert res4.shape == want4.shape == (1, 64, 16, 24)  # stride 4: the CIFAR stem does not downsample
    assert (res4 - want4).abs().max().item() <= 1e-5
    assert (res5 - want5).abs().max().item() <= 1e-5
    assert want4.abs().max().item() > 0.1  # the comparison is not between zeros


def test_imagenet_stem_equals_detectron2s_own_resnet18():
    """With the ImageNet stem and width 64 the builder gives Detectron2's own ResNet-18, layer for layer."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_backbone, build_resnet_backbone

    cfg = smoke_config("MODEL.RESNETS.STEM_TYPE", "imagenet", "MODEL.RESNETS.STEM_OUT_CHANNELS", "64",
                       "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.OUT_FEATURES", "['res4', 'res5']")
    ours = build_backbone(cfg)
    theirs = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in theirs.state_dict().items()]
    assert {k: s.stride for k, s in ours.output_shape().items()} == {"res4": 16, "res5": 32}


def test_basic_block_head_and_stem_choices():
    from detectron2.modeling import build_model
    from detectron2.modeling.backbone.resnet import BasicBlock

    from transfer.roi_heads import Res5ROIHeadsBasicBlockExtraNorm

    model = build_model(smoke_config("MODEL.RESNETS.DEPTH", "34"))
    assert isinstance(model.roi_heads, Res5ROIHeadsBasicBlockExtraNorm)
    blocks = [m for name, m in model.roi_heads.res5.named_children() if name != "norm"]
    assert len(blocks) == 3 and all(isinstance(b, BasicBlock) for b in blocks)
    assert model.roi_heads.res5.norm.num_features == 128 == model.roi_heads.box_predictor.cls_score.in_features
    assert [len(model.backbone.res2), len(model.backbone.res3), len(model.backbone.res4)] == [3, 4, 6]
    assert model.backbone.output_shape()["res4"].stride == 4
    with pytest.raises(UserError, match="STEM_TYPE 'tiny'"):
        build_model(smoke_config("MODEL.RESNETS.STEM_TYPE", "tiny"))
    with pytest.raises(UserError, match="DEPTH 50"):
        build_model(smoke_config("MODEL.RESNETS.DEPTH", "50"))


def test_checkpoint_that_does_not_fit_the_config_is_refused(tmp_path):
    from simsiam_eval.checkpoints import read_checkpoint
    from transfer.run import check_backbone_fits, model_name

    cfg = smoke_config()
    check_backbone_fits(cfg, read_checkpoint("random:resnet18:cifar:16"), "r18")
    with pytest.raises(UserError, match="imagenet stem of width 64, but the config builds the cifar stem of width 16"):
        check_backbone_fits(cfg, read_checkpoint("random:resnet18"), "r18")
    with pytest.raises(UserError, match="holds a resnet34"):
        check_backbone_fits(cfg, read_checkpoint("random:resnet34:cifar:16"), "r34")
    assert model_name(cfg) == "Faster R-CNN R18-C4 (cifar stem, width 16)"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cifar_r18_fine_tune_gives_ap(r18_cifar, data_root, tmp_path):
    from simsiam_eval.cli import main

    output = tmp_path / "run"
    assert main(["transfer", "--checkpoint", str(r18_cifar[0]), "--task", SMOKE_R18, "--data-root", str(data_root),
                 "--output-dir", str(output), "--quiet", "--trials", "1",
                 "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2"]) == 0
    record = json.loads((output / "trial1" / "record.json").read_text())
    assert set(record["metrics"]) == {"AP", "AP50", "AP75"}
    assert record["settings"]["model"] == "Faster R-CNN R18-C4 (cifar stem, width 16)"
    assert (record["checkpoint"]["arch"], record["checkpoint"]["stem"], record["checkpoint"]["width"]) == \
           ("resnet18", "cifar", 16)
    log = (output / "trial1" / "log.txt").read_text()
    assert "100/100 backbone tensors loaded from the checkpoint" in log
    assert "not used by the model" not in log
