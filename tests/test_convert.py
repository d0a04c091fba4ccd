"""Conversion: round trips, the Detectron2 key set, verification, safety, the CLI and the MoCo-style script."""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from moco_reference import moco_detectron2_rename
from safetensors.torch import load_file
from torchvision import models

from pretrain.model import SimSiam
from simsiam_eval.checkpoints import read_checkpoint
from simsiam_eval.checkpoints.convert import convert_checkpoint
from simsiam_eval.checkpoints.renaming import detectron2_to_torchvision, torchvision_to_detectron2
from simsiam_eval.checkpoints.writers import target_from_suffix
from simsiam_eval.cli import main
from simsiam_eval.errors import UserError
from simsiam_eval.safe_pickle import safe_load
from transfer.verify import LIBRARY_CHECKS

ROOT = Path(__file__).resolve().parent.parent
PIXEL_MEAN, PIXEL_STD = [123.675, 116.280, 103.530], [58.395, 57.120, 57.375]


def moco_rules(state: dict) -> set[str]:
    """MoCo's detection/convert-pretrain-to-detectron2.py, applied to a torchvision backbone's keys."""
    return {moco_detectron2_rename(k) for k in state}


def random_backbone(arch: str = "resnet50") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = models.__dict__[arch]()
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if "running_var" in name:
                tensor.uniform_(0.5, 2.0)
            elif "running_mean" in name or name.endswith("bn3.weight") or name.endswith("bn2.weight"):
                tensor.normal_()
            elif "num_batches_tracked" in name:
                tensor.fill_(1234)
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """A torchvision ResNet-50 backbone (non-trivial BN statistics) saved as a state dict."""
    path = tmp_path_factory.mktemp("r50") / "resnet50.pth"
    state = random_backbone()
    torch.save(state, path)
    return path, state


def assert_identical(state: dict, reference: dict) -> None:
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def test_torchvision_detectron2_torchvision_round_trip_is_exact(r50, tmp_path):
    source, state = r50
    convert_checkpoint(source, tmp_path / "r50.pkl", library_checks=LIBRARY_CHECKS)
    with open(tmp_path / "r50.pkl", "rb") as f:
        data = safe_load(f)
    assert data["__author__"] and data["matching_heuristics"] is True
    assert set(data["model"]) == moco_rules(state)             # the Detectron2 key set = MoCo's rules
    assert not any(k.startswith("stem.fc") for k in data["model"])
    assert all(type(v).__module__ == "numpy" for v in data["model"].values())
    assert data["model"]["stem.conv1.norm.running_var"].min() >= 0.5  # BN statistics kept
    raw = (tmp_path / "r50.pkl").read_bytes()  # numpy 1.x has no numpy._core; numpy 2 warns on numpy.core
    assert b"numpy._core" not in raw and b"numpy.core" not in raw
    assert all(v.flags.writeable for v in data["model"].values())  # torch.from_numpy without warnings
    convert_checkpoint(tmp_path / "r50.pkl", tmp_path / "back.pth")
    assert_identical(torch.load(tmp_path / "back.pth", weights_only=True), state)


def test_torchvision_safetensors_torchvision_round_trip_is_exact(r50, tmp_path):
    source, state = r50
    convert_checkpoint(source, tmp_path / "r50.safetensors")
    assert_identical(load_file(tmp_path / "r50.safetensors"), state)
    convert_checkpoint(tmp_path / "r50.safetensors", tmp_path / "back.pth")
    assert_identical(torch.load(tmp_path / "back.pth", weights_only=True), state)


def test_renaming_functions_are_inverse(r50):
    _, state = r50
    for key in state:
        assert detectron2_to_torchvision(torchvision_to_detectron2(key)) == key
    assert {torchvision_to_detectron2(k) for k in state} == moco_rules(state)


def test_timm_target_and_torchvision_loading(r50, tmp_path):
    source, state = r50
    report = convert_checkpoint(source, tmp_path / "timm.pth", "timm")
    assert report.checks[-1].name == "timm pooled features"
    if report.checks[-1].passed is None:
        pytest.skip("timm not installed: the numerical check was skipped")
    assert report.checks[-1].passed
    import timm

    model = timm.create_model("resnet50", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "timm.pth")))
    assert torch.equal(model.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])


def test_torchvision_output_loads_like_main_lincls(r50, tmp_path):
    source, _ = r50
    convert_checkpoint(source, tmp_path / "tv.pth")
    missing = models.resnet50().load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=False)
    assert set(missing.missing_keys) == {"fc.weight", "fc.bias"} and not missing.unexpected_keys


def test_verification_table_counts(tmp_path):
    model = SimSiam("resnet18", dim=64, pred_dim=16)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": state}, tmp_path / "ckpt.pth.tar")
    report = convert_checkpoint(tmp_path / "ckpt.pth.tar", tmp_path / "out.safetensors")
    backbone = [k for k in state if k.startswith("module.encoder.") and not k.startswith("module.encoder.fc.")]
    assert len(report.source.found) == report.written == len(backbone)
    assert len(report.source.dropped) == len(state) - len(backbone)
    table = report.table()
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in table.splitlines())}
    assert rows["backbone tensors found"][0] == rows["backbone tensors written"][0] == str(len(backbone))
    assert rows["backbone tensors missing"][0] == "0"
    assert "module.encoder.fc.*" in table and "module.predictor.*" in table
    assert all(check.passed for check in report.checks)


def test_cifar_stem_converts_to_detectron2_for_basic_blocks_only_and_to_safetensors(tmp_path):
    ckpt = tmp_path / "c.pth"
    net = SimSiam("resnet18", dim=64, pred_dim=16, stem="cifar", width=32).encoder
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, ckpt)
    report = convert_checkpoint(ckpt, tmp_path / "c.pkl", numerical=False)
    assert next(c for c in report.checks if c.name == "Detectron2 metadata").passed
    again = read_checkpoint(tmp_path / "c.pkl")
    assert (again.arch, again.stem, again.width) == ("resnet18", "cifar", 32)
    with pytest.raises(UserError, match="resnet50 with the CIFAR 3x3 stem has no Detectron2 backbone"):
        convert_checkpoint("random:resnet50:cifar:16", tmp_path / "c50.pkl", library_checks=LIBRARY_CHECKS)
    assert not (tmp_path / "c50.pkl").exists()
    report = convert_checkpoint(ckpt, tmp_path / "c.safetensors")
    assert (report.source.stem, report.source.width) == ("cifar", 32)
    assert read_checkpoint(tmp_path / "c.safetensors").width == 32


def detectron2_basic_block_names(blocks_per_stage=(2, 2, 2, 2)) -> set[str]:
    """Detectron2's names for a BasicBlock ResNet (detectron2/modeling/backbone/resnet.py): ``stem.conv1``,
    ``resN.i.conv1``/``conv2`` and, where the width or stride changes, ``shortcut``; each with its ``norm``."""
    norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = set()
    convs = [("stem.conv1", True)] + [(f"res{stage}.{i}.{conv}", conv != "shortcut" or (stage > 2 and i == 0))
                                      for stage, count in enumerate(blocks_per_stage, start=2)
                                      for i in range(count) for conv in ("conv1", "conv2", "shortcut")]
    for conv, present in convs:
        if present:
            names |= {f"{conv}.weight", *(f"{conv}.norm.{p}" for p in norm)}
    return names


def test_basic_block_names_become_detectron2s(tmp_path):
    assert torchvision_to_detectron2("layer1.1.bn2.running_var") == "res2.1.conv2.norm.running_var"
    assert torchvision_to_detectron2("layer3.0.downsample.0.weight") == "res4.0.shortcut.weight"
    assert torchvision_to_detectron2("layer3.0.downsample.1.bias") == "res4.0.shortcut.norm.bias"
    assert torchvision_to_detectron2("bn1.weight") == "stem.conv1.norm.weight"
    cases = (("resnet18", "cifar", 16, (2, 2, 2, 2)), ("resnet34", "imagenet", 64, (3, 4, 6, 3)))
    for arch, stem, width, blocks in cases:
        convert_checkpoint(f"random:{arch}:{stem}:{width}", tmp_path / f"{arch}.pkl", numerical=False)
        with open(tmp_path / f"{arch}.pkl", "rb") as f:
            data = safe_load(f)
        assert set(data["model"]) == detectron2_basic_block_names(blocks)
        assert (data["arch"], data["stem"], data["width"]) == (arch, stem, width)
        assert data["model"]["res2.0.conv1.weight"].shape == (width, width, 3, 3)
        for key in data["model"]:
            assert torchvision_to_detectron2(detectron2_to_torchvision(key)) == key


def test_target_from_suffix():
    assert target_from_suffix("a/model.pkl") == "detectron2"
    assert target_from_suffix("model.safetensors") == "safetensors"
    assert target_from_suffix("model.pth.tar") == "torchvision"
    assert target_from_suffix("model.weights") is None


# ------------------------------------------------------------------ garbage in: one-line errors, no code run
def vit_checkpoint(path):
    state = {"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 5, 8),
             "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    torch.save({"state_dict": {f"module.base_encoder.{k}": v for k, v in state.items()}}, path)


class Arbitrary:
    def __init__(self):
        self.value = 3


@pytest.mark.parametrize("case", ["empty", "truncated", "arbitrary-pickle", "vit", "no-backbone", "text"])
def test_garbage_in_gives_one_line_errors(r50, tmp_path, case):
    bad = tmp_path / "bad.pth"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "truncated":
        bad.write_bytes(r50[0].read_bytes()[: 5_000_000])
    elif case == "arbitrary-pickle":
        bad.write_bytes(pickle.dumps(Arbitrary()))
    elif case == "vit":
        vit_checkpoint(bad)
    elif case == "no-backbone":
        torch.save({"state_dict": {"module.head.weight": torch.zeros(10, 4)}, "epoch": 3}, bad)
    else:
        bad.write_text("not a checkpoint at all\n")
    with pytest.raises(UserError) as err:
        convert_checkpoint(bad, tmp_path / "out.pkl", library_checks=LIBRARY_CHECKS)
    assert "bad.pth" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.pkl").exists()
    code = main(["convert", str(bad), str(tmp_path / "out.pkl")])
    assert code == 2


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["pickle", "torch"])
def test_a_file_carrying_code_is_refused_not_executed(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / ("evil.pkl" if container == "pickle" else "evil.pth")
    payload = {"model": {"stem.conv1.weight": RunsCode(marker)}, "__author__": "x"}
    if container == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(UserError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


def test_non_tensor_metadata_objects_become_placeholders(tmp_path):
    """DINO and timm store argparse.Namespace; Lightning stores config objects: read, never run."""
    state = {f"module.{k}": v for k, v in random_backbone("resnet18").items()}
    torch.save({"state_dict": state, "args": Arbitrary()}, tmp_path / "m.pth")
    assert read_checkpoint(tmp_path / "m.pth").arch == "resnet18"


# ------------------------------------------------------------------ command line
def test_cli_convert_prints_the_table(r50, tmp_path, capsys):
    assert main(["convert", str(r50[0]), str(tmp_path / "o.pkl")]) == 0
    out = capsys.readouterr().out
    assert "backbone tensors written" in out and "detectron2" in out and "re-read output" in out
    assert main(["convert", str(r50[0]), str(tmp_path / "o.bin"), "--to", "safetensors", "--from", "torchvision"]) == 0
    assert load_file(tmp_path / "o.bin")
    assert main(["convert", str(r50[0]), str(tmp_path / "o.pth"), "--arch", "resnet18"]) == 2
    assert "resnet50" in capsys.readouterr().err


def test_moco_style_script_converts_a_simsiam_checkpoint(tmp_path):
    """MoCo's own script writes an empty model for this layout; ours finds every backbone tensor."""
    model = SimSiam("resnet50")
    torch.save({"epoch": 100, "arch": "resnet50",
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "s.pth.tar")
    result = subprocess.run([sys.executable, str(ROOT / "tools/convert-pretrain-to-detectron2.py"),
                             str(tmp_path / "s.pth.tar"), str(tmp_path / "s.pkl")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "s.pkl", "rb") as f:
        written = safe_load(f)["model"]
    backbone = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("fc.")}
    assert set(written) == moco_rules(backbone)
    bad = subprocess.run([sys.executable, str(ROOT / "tools/convert-pretrain-to-detectron2.py"), "only-one"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


# ------------------------------------------------------------------ Detectron2 (skipped without it)
@pytest.mark.detectron2
def test_detectron2_r50_c4_loads_every_backbone_tensor_and_matches_torchvision(r50, tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 not installed (see ../shared/DETECTRON2.md)")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    source, state = r50
    convert_checkpoint(source, tmp_path / "r50.pkl", library_checks=LIBRARY_CHECKS)
    cfg = get_cfg()
    config_file = ROOT / "configs/detectron2/Base-RCNN-C4-BN-torchvision.yaml"
    if config_file.exists():  # our transfer config (its head is registered by transfer.roi_heads)
        import transfer.roi_heads  # noqa: F401
        cfg.merge_from_file(str(config_file))
    else:
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
        cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
        cfg.MODEL.RESNETS.NORM = "BN"
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = PIXEL_MEAN, PIXEL_STD
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
        cfg.INPUT.FORMAT = "RGB"
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.INPUT.FORMAT == "RGB"
    assert list(cfg.MODEL.PIXEL_MEAN) == PIXEL_MEAN and list(cfg.MODEL.PIXEL_STD) == PIXEL_STD
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 20
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(tmp_path / "r50.pkl"))

    # every backbone parameter and BN statistic of the detector came from the file
    matched = 0
    for key, value in model.state_dict().items():
        if key.startswith("roi_heads.res5.") and not key.startswith("roi_heads.res5.norm."):
            name = detectron2_to_torchvision(key)
        elif key.startswith("backbone."):
            name = detectron2_to_torchvision(key[len("backbone."):])
        else:
            continue
        assert torch.equal(value, state[name]), key
        matched += 1
    assert matched == len(state)

    # res4 (and res5 through the box head's res5 blocks) equal torchvision's on an RGB image
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0)) * 255
    net = models.resnet50()
    net.load_state_dict(state, strict=False)
    net.eval()
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1) / 255, torch.tensor(PIXEL_STD).view(3, 1, 1) / 255
    x = ((image / 255 - mean) / std)[None]                  # torchvision's ToTensor + Normalize
    with torch.no_grad():
        pixels = model.preprocess_image([{"image": image}]).tensor  # Detectron2's PIXEL_MEAN/STD in 0-255 units
        assert pixels.shape == x.shape and (pixels - x).abs().max().item() <= 1e-5
        x = pixels  # the same input to both, so the comparison below tests the weights and the architecture
        res4 = model.backbone(pixels)["res4"]
        want4 = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        res5 = res4
        for name, block in model.roi_heads.res5.named_children():
            if name != "norm":
                res5 = block(res5)
        want5 = net.layer4(want4)
    assert res4.shape == want4.shape
    assert (res4 - want4).abs().max().item() <= 1e-5
    assert (res5 - want5).abs().max().item() <= 1e-5


@pytest.mark.detectron2
def test_detectron2_numerical_check_runs_in_the_conversion(r50, tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 not installed (see ../shared/DETECTRON2.md)")
    report = convert_checkpoint(r50[0], tmp_path / "r50.pkl", library_checks=LIBRARY_CHECKS)
    check = report.checks[-1]
    assert check.name.startswith("detectron2") and check.passed, check.detail
    assert f"{len(r50[1])} tensors matched" in check.detail


def test_library_checks_come_from_the_caller(tmp_path):
    """checkpoints/ knows no Detectron2: without transfer.verify.LIBRARY_CHECKS a .pkl gets torchvision's check."""
    report = convert_checkpoint("random:resnet18", tmp_path / "r18.pkl")
    assert report.checks[-1].name == "torchvision pooled features" and report.checks[-1].passed


# ------------------------------------------------------------------ "verified" means a numerical check ran
def hide_module(monkeypatch, name: str) -> None:
    """Make ``name`` (and its submodules already imported) unimportable, as if it were not installed."""
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.setitem(sys.modules, loaded, None)
    monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("target,library,output", [("detectron2", "detectron2", "r18.pkl"),
                                                    ("timm", "timm", "r18.pth")])
def test_without_the_target_library_a_torchvision_forward_check_runs(monkeypatch, tmp_path, target, library,
                                                                     output):
    hide_module(monkeypatch, library)
    report = convert_checkpoint("random:resnet18", tmp_path / output, target, library_checks=LIBRARY_CHECKS)
    numerical = report.checks[-1]
    assert numerical.passed is True, numerical            # it ran and passed: never "skipped"
    assert numerical.name == f"torchvision pooled features ({library} not installed)"
    assert re.fullmatch(r"max \|diff\| \S+ \(tolerance 1e-05\)", numerical.detail)
    assert "torchvision pooled features" in report.summary() and "verified" in report.summary()
    assert "skipped" not in report.table()


def test_the_missing_row_counts_what_the_file_lacks_not_what_the_writer_claims(tmp_path):
    """A .pkl without its BN counters (all 0 in a fresh init, so the re-read fills in equal zeros) while the
    writer claims every tensor: the verification reads the file and reports the 20 tensors it lacks."""
    from simsiam_eval.checkpoints.verify import verify_conversion

    ckpt = read_checkpoint("random:resnet18")
    model = {moco_detectron2_rename(k): v.numpy() for k, v in ckpt.state_dict.items()
             if not k.endswith("num_batches_tracked")}
    with open(tmp_path / "r18.pkl", "wb") as f:
        pickle.dump({"model": model, "__author__": "test", "matching_heuristics": True,
                     "arch": "resnet18", "stem": "imagenet", "width": 64}, f)
    with pytest.raises(UserError, match=r"20 backbone tensors missing .*layer1\.0\.bn1\.num_batches_tracked"):
        verify_conversion(ckpt, tmp_path / "r18.pkl", "detectron2", list(ckpt.state_dict), numerical=False)


def test_the_missing_row_is_computed(tmp_path):
    report = convert_checkpoint("random:resnet18", tmp_path / "r18.pkl", numerical=False)
    assert report.missing == []
    row = next(line for line in report.table().splitlines() if line.startswith("backbone tensors missing"))
    assert re.split(r"\s{2,}", row)[1] == "0" and "read back" in row
    assert "no numerical check" in report.summary() and "verified" not in report.summary()


# ------------------------------------------------------------------ CI guard of tools/parity/moco_detection.py, part 1
def moco_converter(state_dict: dict) -> dict:
    """MoCo's detection/convert-pretrain-to-detectron2.py, re-stated: the ``module.encoder_q.*`` tensors, prefix
    removed, renamed by its loop (tests/moco_reference.py), as numpy arrays; everything else left out."""
    prefix = "module.encoder_q."
    return {moco_detectron2_rename(k[len(prefix):]): v.numpy() for k, v in state_dict.items() if k.startswith(prefix)}


def test_moco_v2_checkpoint_converts_to_mocos_pkl_without_its_fc(tmp_path):
    """The MoCo converter parity rows: same key set except MoCo's stem.fc.* (its MLP head), same arrays."""
    from test_checkpoints_readers import make_moco

    make_moco(tmp_path / "moco_v2.pth.tar")
    theirs = moco_converter(torch.load(tmp_path / "moco_v2.pth.tar", weights_only=True)["state_dict"])
    convert_checkpoint(tmp_path / "moco_v2.pth.tar", tmp_path / "ours.pkl", library_checks=LIBRARY_CHECKS)
    with open(tmp_path / "ours.pkl", "rb") as f:
        ours = safe_load(f)
    head = {k for k in theirs if k.startswith("stem.fc.")}
    assert head == {"stem.fc.0.weight", "stem.fc.0.bias", "stem.fc.2.weight", "stem.fc.2.bias"}
    assert set(ours["model"]) == set(theirs) - head
    for key, value in ours["model"].items():
        assert value.dtype == theirs[key].dtype and (value == theirs[key]).all(), key
    assert ours["matching_heuristics"] is True
    assert (ours["arch"], ours["stem"], ours["width"]) == ("resnet18", "imagenet", 64)
