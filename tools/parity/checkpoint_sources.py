#!/usr/bin/env python
"""Parity of ``simsiam-eval convert`` with the code that writes each source format it reads, on CPU in fp32.

For every source whose producing code runs here, the model is built with that upstream code, given a
training step (so BN statistics, momentum encoders and heads are not at their initial values), saved as
its training script saves it, converted by ``convert_checkpoint`` to torchvision weights, and loaded by
torchvision's own ResNet. Compared: the detected ``--from`` format, and the upstream module's pooled
features on the same input (eval mode, <= 1e-5) against those of the checkpoint as our evaluations read it
and those of the converted file (a stem no target format records must instead be refused).

    python tools/parity/checkpoint_sources.py --simsiam DIR --moco DIR --moco-v3 DIR --dino DIR \\
        --solo-learn DIR --vissl DIR

A source whose checkout is not given, or whose code does not run here, gets a "not run: <reason>" row,
which is a mismatch (exit 1). Where the upstream package cannot be imported as a whole, the smallest piece
of it that can is run and the row says so ("fallback: ...").

CI guards (no checkouts needed): tests/test_checkpoints_readers.py builds each layout from module structures written
out in the test (test_reader_recovers_the_backbone_it_was_built_from: format detected, every tensor, conversion;
test_dropped_parts_are_named; the solo-learn CIFAR stem: test_solo_learn_cifar_backbone_gives_solo_learns_features
and test_solo_learn_cifar_stem_is_not_written_where_its_padding_would_be_lost); tests/test_checkpoints.py::
test_build_backbone_gives_the_source_model_features (features from the tensors read).
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib
import runpy
import sys
import tempfile
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision  # noqa: E402
from common import ParityReport, Row  # noqa: E402
from moco_detection import build_moco_checkpoint, ddp_state_dict  # noqa: E402
from torchvision import models  # noqa: E402

TOLERANCE = 1e-5
COMMITS = {"simsiam": "facebookresearch/simsiam a7bc177", "moco": "facebookresearch/moco 87e36d3",
           "moco_v3": "facebookresearch/moco-v3 c349e6e", "dino": "facebookresearch/dino 7c446df",
           "solo_learn": "vturrisi/solo-learn 9187ea3", "vissl": "facebookresearch/vissl 09270ed2"}


@dataclass
class Source:
    """A checkpoint written by upstream code and that code's own backbone, ready for comparison."""

    path: Path
    expected_format: str
    features: Callable[[torch.Tensor], torch.Tensor]  # the upstream module's pooled features
    arch: str = "resnet50"
    size: int = 64            # input images of size x size pixels
    convertible: bool = True  # False: no target format can record its stem, conversion must be refused
    note: str = ""


def upstream_modules(checkout: Path, *names: str) -> list[types.ModuleType]:
    """Import top-level modules from an official checkout, freshly: checkouts share names (``moco``, ``utils``)."""
    for cached in [m for m in sys.modules if m.split(".")[0] in {n.split(".")[0] for n in names}]:
        del sys.modules[cached]
    sys.path.insert(0, str(checkout))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(checkout))


def pooled_by_avgpool(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The flattened output of ``model.avgpool`` during ``model(x)``: a torchvision-style ResNet's pooled
    features, whatever its ``fc`` is (a projector, an MLP head)."""
    def features(x: torch.Tensor) -> torch.Tensor:
        seen = []
        handle = model.avgpool.register_forward_hook(lambda module, inputs, output: seen.append(output))
        try:
            model.eval()(x)
        finally:
            handle.remove()
        return torch.flatten(seen[0], 1)
    return features


def train_step(module: nn.Module, images: torch.Tensor, lr: float = 0.05) -> None:
    """One SGD step on a stand-in loss (mean square of the output) in train mode: BN statistics, weights
    and counters leave their initial values."""
    module.train()
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr, momentum=0.9)
    module(images).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


# ----------------------------------------------------------------------------- the sources
def simsiam_source(checkout: Path, scratch: Path) -> Source:
    """main_simsiam.py: SimSiam(resnet50, 2048, 512) (zero_init_residual inside), one step of its loss (negative cosine,
    stop-gradient) with its fix_pred_lr optimizer, DDP state dict, {'epoch', 'arch', 'state_dict', 'optimizer'}."""
    (builder,) = upstream_modules(checkout, "simsiam.builder")
    model = builder.SimSiam(models.__dict__["resnet50"], 2048, 512)
    optimizer = torch.optim.SGD([{"params": model.encoder.parameters(), "fix_lr": False},
                                 {"params": model.predictor.parameters(), "fix_lr": True}], 0.05, momentum=0.9,
                                weight_decay=1e-4)
    criterion = nn.CosineSimilarity(dim=1)
    x1, x2 = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    p1, p2, z1, z2 = model(x1=x1, x2=x2)
    (-(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5).backward()
    optimizer.step()
    path = scratch / "simsiam_checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": ddp_state_dict(model, scratch / "dist_init"),
                "optimizer": optimizer.state_dict()}, path)
    return Source(path, "simsiam", pooled_by_avgpool(model.encoder))


def moco_source(checkout: Path, scratch: Path) -> Source:
    """main_moco.py (v2: --mlp --moco-t 0.2): tools/parity/moco_detection.py's build_moco_checkpoint."""
    upstream_modules(checkout, "moco.builder")  # the module build_moco_checkpoint imports
    model = build_moco_checkpoint(scratch / "moco_v2_checkpoint_0199.pth.tar", seed=0)
    return Source(scratch / "moco_v2_checkpoint_0199.pth.tar", "moco", pooled_by_avgpool(model.encoder_q))


def mocov3_source(checkout: Path, scratch: Path) -> Source:
    """main_moco.py of MoCo v3 (ResNet-50): MoCo_ResNet(resnet50 zero_init_residual, 256, 4096, 1.0), its LARS,
    a step of the base encoder and the momentum update; {'epoch', 'arch', 'state_dict', 'optimizer', 'scaler'}.
    (Its forward calls .cuda(): the step uses the base encoder alone.)"""
    builder, optimizers = upstream_modules(checkout, "moco.builder", "moco.optimizer")
    model = builder.MoCo_ResNet(partial(models.resnet50, zero_init_residual=True), 256, 4096, 1.0)
    optimizer = optimizers.LARS(model.parameters(), 0.6, weight_decay=1e-6, momentum=0.9)
    model.train()
    model.predictor(model.base_encoder(torch.randn(4, 3, 64, 64))).pow(2).mean().backward()
    optimizer.step()
    model._update_momentum_encoder(0.99)
    with warnings.catch_warnings():  # no CUDA: the scaler is disabled, as on a CPU-only run
        warnings.simplefilter("ignore")
        scaler = torch.amp.GradScaler("cuda")
    path = scratch / "mocov3_checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": ddp_state_dict(model, scratch / "dist_init"),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, path)
    return Source(path, "mocov3", pooled_by_avgpool(model.base_encoder))


def dino_source(checkout: Path, scratch: Path) -> Source:
    """main_dino.py --arch resnet50: student and teacher utils.MultiCropWrapper(torchvision resnet50, DINOHead),
    the teacher loaded from the student, a student step then the teacher's EMA update and its own forward
    (BN statistics); {'student', 'teacher' (DDP), 'optimizer', 'epoch', 'args', 'dino_loss'}."""
    utils, vision_transformer, main_dino = upstream_modules(checkout, "utils", "vision_transformer", "main_dino")
    student = utils.MultiCropWrapper(models.resnet50(), vision_transformer.DINOHead(2048, 65536, False, True))
    teacher = utils.MultiCropWrapper(models.resnet50(), vision_transformer.DINOHead(2048, 65536, False))
    teacher.load_state_dict(student.state_dict())
    train_step(student, torch.randn(4, 3, 64, 64))
    with torch.no_grad():
        for param_q, param_k in zip(student.parameters(), teacher.parameters()):
            param_k.data.mul_(0.996).add_((1 - 0.996) * param_q.detach().data)
        teacher.train()(torch.randn(4, 3, 64, 64))
    # main_dino.py converts to SyncBatchNorm before DDP; DDP refuses SyncBatchNorm on the CPU, and the
    # conversion renames nothing (checked below), so the plain-BN modules give the same state dict.
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(teacher))
    if list(synced.state_dict()) != list(teacher.state_dict()):
        raise SystemExit("SyncBatchNorm conversion changed the state dict names")
    args = argparse.Namespace(arch="resnet50", out_dim=65536, use_bn_in_head=False, norm_last_layer=True)
    loss = main_dino.DINOLoss(65536, 10, 0.04, 0.04, 0, 100)
    optimizer = torch.optim.SGD(utils.get_params_groups(student), lr=0)
    path = scratch / "dino_checkpoint.pth"
    torch.save({"student": ddp_state_dict(student, scratch / "dist_init"),
                "teacher": ddp_state_dict(teacher, scratch / "dist_init"), "optimizer": optimizer.state_dict(),
                "epoch": 100, "args": args, "dino_loss": loss.state_dict()}, path)
    backbone = teacher.backbone  # fc = Identity: its forward is the pooled features
    return Source(path, "dino", lambda x: backbone.eval()(x), note="SyncBatchNorm conversion skipped on CPU "
                                                                    "(renames nothing)")


def solo_learn_surgery(checkout: Path) -> list[tuple[str, str]]:
    """(attribute, expression) of BaseMethod.__init__'s ResNet surgery, read from solo/methods/base.py:
    the assignments to ``self.backbone.<attr>`` (fc, and conv1 / maxpool for CIFAR data)."""
    tree = ast.parse((checkout / "solo" / "methods" / "base.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = ast.unparse(node.targets[0])
            if target.startswith("self.backbone.") and target.count(".") == 2:
                found.append((target.split(".")[-1], ast.unparse(node.value)))
    return found


def solo_learn_source(checkout: Path, scratch: Path, cifar: bool) -> Source:
    """Fallback: solo-learn does not import here (solo/__init__ imports its methods, which need lightning,
    not installed: requirements.txt pins lightning==2.1.2). Run instead: its ResNet factory
    (solo/backbones/resnet/resnet.py, run as is) and BaseMethod.__init__'s surgery, evaluated from the
    assignment expressions in solo/methods/base.py; the LightningModule's state dict (backbone, projector,
    classifier, momentum_backbone) saved as Lightning's ModelCheckpoint lays it out."""
    factory = runpy.run_path(str(checkout / "solo" / "backbones" / "resnet" / "resnet.py"))
    arch = "resnet18" if cifar else "resnet50"
    surgery = {attr: expr for attr, expr in solo_learn_surgery(checkout)}
    module = nn.Module()
    for name in ("backbone", "momentum_backbone"):
        backbone = factory[arch]()
        features_dim = backbone.inplanes
        for attr in ("fc", "conv1", "maxpool") if cifar else ("fc",):
            setattr(backbone, attr, eval(surgery[attr], {"nn": nn}))  # noqa: S307 (solo-learn's own expression)
        setattr(module, name, backbone)
    module.projector = nn.Sequential(nn.Linear(features_dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 64))
    module.classifier = nn.Linear(features_dim, 10 if cifar else 1000)
    size = 32 if cifar else 64
    train_step(module.backbone, torch.randn(4, 3, size, size))
    with torch.no_grad():
        module.momentum_backbone.train()(torch.randn(4, 3, size, size))
    path = scratch / f"solo_learn_{arch}{'_cifar' if cifar else ''}.ckpt"
    torch.save({"epoch": 999, "global_step": 97000, "pytorch-lightning_version": "2.1.2",
                "state_dict": module.state_dict(), "loops": {}, "callbacks": {}, "optimizer_states": [],
                "lr_schedulers": [], "hparams_name": "cfg", "hyper_parameters": {"method": "byol"}}, path)
    surgery_done = f"conv1 = {surgery['conv1']}" if cifar else "fc = Identity"
    note = f"fallback (lightning not installed): solo-learn's factory + base.py's surgery {surgery_done}"
    return Source(path, "solo-learn", lambda x: module.backbone.eval()(x), arch=arch, size=size,
                  convertible=not cifar, note=note)


def vissl_source(checkout: Path, scratch: Path) -> Source:
    """Fallback: vissl's package __init__ files import classy_vision (not installed) to register every model.
    Run instead: VISSL's own trunk, vissl/models/trunks/resnext.py (ResNeXt with its _feature_blocks), with
    those __init__ files bypassed (empty packages over the real folders, a no-op register_model_trunk) and
    an empty stand-in for pkg_resources (gone from this setuptools; vissl uses it only in a function). The
    checkpoint is laid out as log_hooks.py writes it: classy_state_dict.base_model = get_classy_state()."""
    root = str(checkout)
    sys.path.insert(0, root)
    bypassed = {"vissl.data": {}, "vissl.data.collators": {}, "vissl.models": {},
                "vissl.models.trunks": {"register_model_trunk": lambda name: (lambda cls: cls)}}
    for name, attributes in bypassed.items():
        package = types.ModuleType(name)
        package.__path__ = [str(checkout / name.replace(".", "/"))]
        package.__dict__.update(attributes)
        sys.modules[name] = package
    sys.modules.setdefault("pkg_resources", types.ModuleType("pkg_resources"))
    try:
        from vissl.config import AttrDict
        from vissl.models.trunks.resnext import ResNeXt
    finally:
        sys.path.remove(root)
    config = AttrDict({  # vissl/config/defaults.yaml MODEL.TRUNK.RESNETS and the model settings ResNeXt reads
        "INPUT_TYPE": "rgb",
        "ACTIVATION_CHECKPOINTING": {"USE_ACTIVATION_CHECKPOINTING": False, "NUM_ACTIVATION_CHECKPOINTING_SPLITS": 2},
        "TRUNK": {"RESNETS": {"DEPTH": 50, "WIDTH_MULTIPLIER": 1, "NORM": "BatchNorm", "GROUPNORM_GROUPS": 32,
                              "STANDARDIZE_CONVOLUTIONS": False, "GROUPS": 1, "ZERO_INIT_RESIDUAL": False,
                              "WIDTH_PER_GROUP": 64, "LAYER4_STRIDE": 2}}})
    trunk = ResNeXt(config, "resnet")
    heads = nn.ModuleList([nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128))])

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return trunk.eval()(x, out_feat_keys=["flatten"])[0]

    trunk.train()
    optimizer = torch.optim.SGD(trunk.parameters(), 0.05, momentum=0.9)
    trunk(torch.randn(4, 3, 64, 64), out_feat_keys=["flatten"])[0].pow(2).mean().backward()
    optimizer.step()
    base_model = {"model": {"trunk": trunk.state_dict(), "heads": heads.state_dict()},
                  "meta": {"trunk": {}, "heads": []}}
    path = scratch / "model_final_checkpoint_phase199.torch"
    torch.save({"phase_idx": 199, "iteration": 250200, "loss": {}, "iteration_num": 250200, "train_phase_idx": 199,
                "classy_state_dict": {"train": True, "base_model": base_model, "optimizer": {}, "phase_idx": 199,
                                      "train_phase_idx": 199, "num_updates": 250200, "losses": [], "hooks": {},
                                      "loss": {}}}, path)
    return Source(path, "vissl", pooled, note="fallback (classy_vision not installed): VISSL's ResNeXt trunk "
                                              "code, package __init__s bypassed")


def timm_source(scratch: Path) -> Source:
    """timm's train.py: create_model('resnet50'), one step, an EMA copy (ModelEmaV3), and CheckpointSaver's
    {'epoch', 'arch', 'state_dict', 'optimizer', 'version': 2, 'args', 'metric', 'state_dict_ema'}."""
    import timm
    from timm.utils import ModelEmaV3

    model = timm.create_model("resnet50")
    ema = ModelEmaV3(model, decay=0.9998)
    train_step(model, torch.randn(4, 3, 64, 64))
    ema.update(model)
    path = scratch / "timm_model_best.pth.tar"
    torch.save({"epoch": 299, "arch": "resnet50", "state_dict": model.state_dict(), "optimizer": {},
                "version": 2, "args": argparse.Namespace(model="resnet50"), "metric": 80.1,
                "state_dict_ema": ema.module.state_dict()}, path)
    return Source(path, "timm", lambda x: model.eval().forward_head(model.forward_features(x), pre_logits=True),
                  note=f"timm {timm.__version__}")


def torchvision_source(scratch: Path) -> Source:
    """torchvision: a resnet50 after one step, ``torch.save(model.state_dict())``."""
    model = models.resnet50()
    train_step(model, torch.randn(4, 3, 64, 64))
    path = scratch / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return Source(path, "torchvision", pooled_by_avgpool(model))


# ----------------------------------------------------------------------------- the comparison
def torchvision_backbone(path: Path, arch: str) -> nn.Module:
    """The converted file loaded by torchvision's own ResNet; only fc may be missing, and fc becomes Identity."""
    net = models.__dict__[arch]()
    missing = net.load_state_dict(torch.load(path, weights_only=True), strict=False)
    if set(missing.missing_keys) != {"fc.weight", "fc.bias"} or missing.unexpected_keys:
        raise SystemExit(f"{path}: not a complete {arch} backbone ({missing})")
    net.fc = nn.Identity()
    return net.eval()


def compare(report: ParityReport, name: str, build: Callable[[], Source], scratch: Path) -> None:
    """Rows: the format detected; the pooled features of the checkpoint as our evaluations read it
    (read_checkpoint + build_backbone: knn, linear, features); those of the converted .pth in torchvision's
    own ResNet (or, for a stem no target format records, that the conversion is refused)."""
    from simsiam_eval.checkpoints import build_backbone, read_checkpoint
    from simsiam_eval.checkpoints.convert import convert_checkpoint
    from simsiam_eval.errors import UserError

    try:
        source = build()
    except Exception as exc:  # the upstream code does not run here: say why, count it as a mismatch
        report.rows.append(Row(f"{name}: pooled features", float("inf"), TOLERANCE,
                               f"not run: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
        return
    ckpt = read_checkpoint(source.path)
    report.add_equal(f"{name}: format detected", ckpt.source_format, source.expected_format,
                     f"{ckpt.arch}, {ckpt.stem} stem, {len(ckpt.found)} backbone tensors; dropped "
                     f"{', '.join(f'{g} ({n})' for g, n in ckpt.dropped_groups.items())}")
    x = torch.randn(2, 3, source.size, source.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = source.features(x)
        report.add(f"{name}: pooled features, checkpoint as read (knn, linear)", build_backbone(ckpt)(x), theirs,
                   TOLERANCE, f"{tuple(theirs.shape)}, {source.size}-px input"
                              + (f"; {source.note}" if source.note else ""))
    output = scratch / f"{source.path.stem}.converted.pth"
    try:
        convert_checkpoint(source.path, output, "torchvision")
    except UserError as exc:
        reason = str(exc).split(": ", 1)[-1]  # without the scratch path
        report.rows.append(Row(f"{name}: conversion to torchvision", 0.0 if not source.convertible else float("inf"),
                               0.0, f"refused{' as it must be' if not source.convertible else ''}: {reason}"))
        return
    if not source.convertible:
        report.rows.append(Row(f"{name}: conversion to torchvision", float("inf"), 0.0,
                               "converted, although no torchvision file records its stem"))
        return
    with torch.no_grad():
        converted = torchvision_backbone(output, source.arch)(x)
    report.add(f"{name}: pooled features, converted .pth in torchvision's resnet", converted, theirs, TOLERANCE)


def timm_version() -> str:
    try:
        import timm
    except ImportError:
        return "(not installed)"
    return timm.__version__


def not_given(report: ParityReport, name: str, option: str) -> None:
    report.rows.append(Row(f"{name}: pooled features", float("inf"), TOLERANCE, f"not run: {option} not given"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for option, repo in (("--simsiam", "facebookresearch/simsiam"), ("--moco", "facebookresearch/moco (87e36d3)"),
                         ("--moco-v3", "facebookresearch/moco-v3"), ("--dino", "facebookresearch/dino"),
                         ("--solo-learn", "vturrisi/solo-learn"), ("--vissl", "facebookresearch/vissl")):
        parser.add_argument(option, type=Path, metavar="DIR", help=f"checkout of {repo}")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    refs = ", ".join(COMMITS[k] for k in COMMITS if getattr(args, k) is not None)
    installed = f"timm {timm_version()}, torchvision {torchvision.__version__} as installed"
    report = ParityReport("Checkpoint sources: upstream model -> simsiam-eval convert -> torchvision, pooled "
                          "features", f"{refs}; {installed}")
    with tempfile.TemporaryDirectory(prefix="checkpoint_sources_") as tmp:
        scratch = Path(tmp)
        sources = [("simsiam (main_simsiam.py)", "simsiam", "--simsiam", simsiam_source),
                   ("moco v2 (main_moco.py --mlp)", "moco", "--moco", moco_source),
                   ("moco v3 ResNet-50 (main_moco.py)", "moco_v3", "--moco-v3", mocov3_source),
                   ("dino ResNet-50 (main_dino.py)", "dino", "--dino", dino_source),
                   ("solo-learn ResNet-50, ImageNet", "solo_learn", "--solo-learn",
                    partial(solo_learn_source, cifar=False)),
                   ("solo-learn ResNet-18, CIFAR", "solo_learn", "--solo-learn",
                    partial(solo_learn_source, cifar=True)),
                   ("vissl ResNet-50 trunk", "vissl", "--vissl", vissl_source)]
        for name, key, option, build in sources:
            checkout = getattr(args, key)
            if checkout is None:
                not_given(report, name, option)
            else:
                compare(report, name, partial(build, checkout.resolve(), scratch), scratch)
        compare(report, "timm resnet50 (train.py)", partial(timm_source, scratch), scratch)
        compare(report, "torchvision resnet50", partial(torchvision_source, scratch), scratch)
    print(report.table())
    return 0 if all(row.ok for row in report.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
