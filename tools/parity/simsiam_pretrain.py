#!/usr/bin/env python
"""Parity of our SimSiam pretraining with facebookresearch/simsiam, step for step.

Usage: ``python tools/parity/simsiam_pretrain.py PATH_OF_A_SIMSIAM_CHECKOUT``

The official ``simsiam.builder.SimSiam``, ``main_simsiam.train`` and ``main_simsiam.adjust_learning_rate``
(imported from the checkout: ``main_simsiam.py`` parses its arguments only in ``main()``) run beside
ours (``pretrain.model``, ``pretrain.schedule`` and the real ``train_one_epoch`` of ``pretrain/train.py``)
from the same initial weights (copied from the official module into ours by name) on the same batches,
fp32 on CPU. Compared: parameter names, the optimiser's groups, the loss of every step, every
parameter, buffer and momentum buffer after the steps (fix_pred_lr on and off), the learning rate of
every epoch of a 100-epoch schedule, and the 2-layer-projector CIFAR preset.

Stated here because ``main_worker`` builds them inline and needs a GPU: the criterion
``nn.CosineSimilarity(dim=1)``, init_lr = lr x batch / 256, the ``--fix-pred-lr`` param groups and
``SGD(init_lr, momentum, weight_decay)``. The official code wraps the model in DDP with SyncBN; in one
process both are identities, so the official module runs unwrapped. The settings (lr, momentum,
weight decay, dim, pred_dim, fix_pred_lr) are parsed by the official argument parser from our
preset's values, so both sides run the same numbers.
"""
from __future__ import annotations

import contextlib
import copy
import io
from argparse import Namespace

from common import ParityReport, add_reference_to_path, checkout_revision, reference_parser

import torch
import torch.nn as nn
from torchvision import models

from pretrain.defaults import PRETRAIN_DEFAULTS
from pretrain.model import build_model
from pretrain.schedule import build_optimizer, scaled_lr, set_epoch_lr
from pretrain.train import train_one_epoch
from simsiam_eval.config import Config, load_config
from simsiam_eval.distributed import DistInfo

BATCH, STEPS, DIM, PRED_DIM = 8, 6, 128, 32   # small: resnet18, 8 images, 6 steps (one per epoch)
TOLERANCE = 1e-5
PRESETS = {  # preset -> (image size, stem adaptation of the official builder)
    "pretrain/imagenet_r50": (64, "none: simsiam.builder.SimSiam(torchvision resnet18) as it is"),
    "pretrain/cifar10_r18": (32, "appendix D from official pieces: torchvision resnet18 with a 3x3 stride-1 "
                                 "conv1 and no max-pool; builder's projector without its 2nd hidden layer"),
}


def preset_config(preset: str, fix_pred_lr: bool) -> Config:
    """The preset, made small (resnet18, dim/pred_dim, batch, epochs) with the lr it has at its own batch."""
    full = load_config(preset, PRETRAIN_DEFAULTS)
    base_lr = full.optim.base_lr * full.batch_size / BATCH  # same init_lr as the preset at its batch size
    return load_config(preset, PRETRAIN_DEFAULTS, [
        "model.arch=resnet18", f"model.dim={DIM}", f"model.pred_dim={PRED_DIM}", f"batch_size={BATCH}",
        f"epochs={STEPS}", f"optim.base_lr={base_lr}", f"optim.fix_pred_lr={fix_pred_lr}", "device=cpu",
        "progress=false"])


def official_args(main_simsiam, cfg: Config) -> Namespace:
    """The official argument parser on our config's values (its defaults for everything else)."""
    argv = ["unused-data-dir", "-a", cfg.model.arch, "-b", str(cfg.batch_size), "--epochs", str(cfg.epochs),
            "--lr", repr(cfg.optim.base_lr), "--momentum", repr(cfg.optim.momentum),
            "--wd", repr(cfg.optim.weight_decay), "--dim", str(cfg.model.dim), "--pred-dim", str(cfg.model.pred_dim)]
    args = main_simsiam.parser.parse_args(argv + (["--fix-pred-lr"] if cfg.optim.fix_pred_lr else []))
    args.gpu, args.print_freq = None, 1
    return args


def cifar_base_encoder(arch: str):
    """Appendix D's CIFAR ResNet from torchvision's: 3x3 stride-1 conv1, no max-pool (a builder argument)."""
    def build(num_classes: int, zero_init_residual: bool) -> nn.Module:
        net = models.__dict__[arch](num_classes=num_classes, zero_init_residual=zero_init_residual)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        return net
    return build


def official_model(builder, cfg: Config) -> nn.Module:
    """``simsiam.builder.SimSiam`` for the preset; for the CIFAR stem, appendix D's variant of it."""
    if cfg.model.stem == "imagenet" and cfg.model.proj_layers == 3:
        return builder.SimSiam(models.__dict__[cfg.model.arch], cfg.model.dim, cfg.model.pred_dim)
    if cfg.model.stem == "cifar" and cfg.model.proj_layers == 2 and cfg.model.width == 64:
        model = builder.SimSiam(cifar_base_encoder(cfg.model.arch), cfg.model.dim, cfg.model.pred_dim)
        fc = model.encoder.fc  # Linear-BN-ReLU, Linear-BN-ReLU, Linear (bias frozen), BN: keep one hidden layer
        model.encoder.fc = nn.Sequential(fc[0], fc[1], fc[2], fc[6], fc[7])
        return model
    raise SystemExit(f"no official counterpart for model {dict(cfg.model)}")


def official_optimizer(model: nn.Module, args: Namespace) -> torch.optim.SGD:
    """main_worker's optimiser: --fix-pred-lr splits encoder and predictor (marked fix_lr), else one group."""
    init_lr = args.lr * args.batch_size / 256
    if args.fix_pred_lr:
        params = [{"params": model.encoder.parameters(), "fix_lr": False},
                  {"params": model.predictor.parameters(), "fix_lr": True}]
    else:
        params = model.parameters()
    return torch.optim.SGD(params, init_lr, momentum=args.momentum, weight_decay=args.weight_decay)


def group_summary(model: nn.Module, optimizer: torch.optim.Optimizer) -> list:
    """Each group's parameter names and settings, for comparing two optimisers."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [([names[id(p)] for p in g["params"]], g["lr"], g["momentum"], g["weight_decay"], g.get("fix_lr", False))
            for g in optimizer.param_groups]


def flat(tensors) -> torch.Tensor:
    """Many tensors as one vector (float64), for one row of the report."""
    return torch.cat([t.detach().double().flatten() for t in tensors])


def max_difference(a: dict, b: dict, names) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in names)


def trainable(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def momentum_buffers(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {n: optimizer.state[p]["momentum_buffer"] for n, p in model.named_parameters() if p in optimizer.state}


@contextlib.contextmanager
def official_losses(main_simsiam):
    """Record every loss ``main_simsiam.train`` computes (its 'Loss' meter), silencing its progress lines."""
    recorded: list[float] = []

    class RecordingMeter(main_simsiam.AverageMeter):
        def update(self, val, n=1):
            super().update(val, n)
            if self.name == "Loss":
                recorded.append(val)

    original, main_simsiam.AverageMeter = main_simsiam.AverageMeter, RecordingMeter
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield recorded
    finally:
        main_simsiam.AverageMeter = original


def fixed_batches(image_size: int) -> list:
    """STEPS batches of two views (seeded normal noise), one per epoch: the same tensors for both sides."""
    g = torch.Generator().manual_seed(0)
    return [[([torch.randn(BATCH, 3, image_size, image_size, generator=g) for _ in range(2)],
              torch.zeros(BATCH, dtype=torch.long))] for _ in range(STEPS)]


def run_official(main_simsiam, model, args, batches) -> tuple[list, list, torch.optim.Optimizer]:
    optimizer = official_optimizer(model, args)
    criterion = nn.CosineSimilarity(dim=1)
    init_lr, lrs = args.lr * args.batch_size / 256, []
    with official_losses(main_simsiam) as losses:
        for epoch, loader in enumerate(batches):
            main_simsiam.adjust_learning_rate(optimizer, init_lr, epoch, args)
            lrs.append([g["lr"] for g in optimizer.param_groups])
            main_simsiam.train([([v.clone() for v in views], y) for views, y in loader], model, criterion,
                               optimizer, epoch, args)
    return losses, lrs, optimizer


def run_ours(model, cfg: Config, batches) -> tuple[list, list, torch.optim.Optimizer]:
    init_lr = scaled_lr(cfg.optim.base_lr, cfg.batch_size)
    optimizer = build_optimizer(model, init_lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.fix_pred_lr)
    info, scaler = DistInfo(0, 1, 0, torch.device("cpu")), torch.amp.GradScaler("cuda", enabled=False)
    losses, lrs = [], []
    for epoch, loader in enumerate(batches):
        lr = set_epoch_lr(optimizer, init_lr, epoch, cfg.epochs, cfg.optim.warmup_epochs)
        lrs.append([g["lr"] for g in optimizer.param_groups])
        stats = train_one_epoch(model, [([v.clone() for v in views], y) for views, y in loader], optimizer,
                                scaler, cfg, info, epoch, lr, None)
        losses.append(stats["loss"])
    return losses, lrs, optimizer


def compare_layout(report: ParityReport, label: str, ours: nn.Module, official: nn.Module, adaptation: str) -> None:
    """Parameter and buffer names and shapes 1:1, and the same frozen parameters."""
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in (ours, official)]
    report.add_equal(f"{label}: state_dict names and shapes 1:1", *shapes,
                     f"{len(shapes[1])} vs {len(shapes[0])} tensors; official adapted: {adaptation}")
    report.add_equal(f"{label}: requires_grad of every parameter", trainable(ours), trainable(official),
                     "frozen: " + ", ".join(n for n, g in trainable(official).items() if not g))


def compare_training(report: ParityReport, tag: str, initial: nn.Module, official: nn.Module, ours: nn.Module,
                     run: tuple, control: dict | None) -> None:
    """Rows for one training run of both sides: groups, lrs, losses, parameters, buffers, momentum."""
    (our_losses, our_lrs, our_opt), (their_losses, their_lrs, their_opt) = run
    report.add_equal(f"{tag}: optimiser groups (names, lr, momentum, wd, fix_lr)", group_summary(ours, our_opt),
                     group_summary(official, their_opt), f"{len(our_opt.param_groups)} group(s), "
                     f"lr {their_opt.defaults['lr']:g}, wd {their_opt.defaults['weight_decay']:g}")
    report.add(f"{tag}: lr of each group, each of {STEPS} epochs", our_lrs, their_lrs, 1e-12)
    report.add(f"{tag}: loss at each of {STEPS} steps", our_losses, their_losses, TOLERANCE,
               "official " + ", ".join(f"{v:.5f}" for v in their_losses))
    ours_state, theirs_state = ours.state_dict(), official.state_dict()
    params = sorted(n for n, _ in official.named_parameters())
    detail = (f"{len(params)} tensors; they moved up to "
              f"{max_difference(theirs_state, initial.state_dict(), params):.3g} from the initial weights")
    if control is not None:
        detail += (f"; the official runs with fix_pred_lr on and off differ by up to "
                   f"{max_difference(control, theirs_state, params):.3g}")
    report.add(f"{tag}: every parameter after {STEPS} steps", flat(ours_state[n] for n in params),
               flat(theirs_state[n] for n in params), TOLERANCE, detail)
    buffers = sorted(set(theirs_state) - set(params))
    report.add(f"{tag}: every buffer after {STEPS} steps", flat(ours_state[n] for n in buffers),
               flat(theirs_state[n] for n in buffers), TOLERANCE,
               f"{len(buffers)} tensors (running mean/var, num_batches_tracked)")
    ours_momentum, theirs_momentum = momentum_buffers(ours, our_opt), momentum_buffers(official, their_opt)
    names = sorted(theirs_momentum)
    report.add_equal(f"{tag}: parameters with a momentum buffer", sorted(ours_momentum), names,
                     f"{len(names)} (the frozen bias has none)")
    report.add(f"{tag}: momentum buffers after {STEPS} steps", flat(ours_momentum[n] for n in names),
               flat(theirs_momentum[n] for n in names), TOLERANCE)


def compare_preset(report: ParityReport, builder, main_simsiam, preset: str) -> None:
    """One preset: layout, then the same steps with fix_pred_lr on and off."""
    image_size, adaptation = PRESETS[preset]
    label = preset.split("/")[1]
    torch.manual_seed(0)
    initial = official_model(builder, preset_config(preset, fix_pred_lr=True))
    compare_layout(report, label, build_model(preset_config(preset, fix_pred_lr=True).model), initial, adaptation)
    batches, with_fixed_lr = fixed_batches(image_size), None
    for fix_pred_lr in (True, False):
        cfg = preset_config(preset, fix_pred_lr)
        official, ours = copy.deepcopy(initial), build_model(cfg.model)
        ours.load_state_dict(initial.state_dict())  # strict: every name matches
        args = official_args(main_simsiam, cfg)
        run = (run_ours(ours, cfg, batches), run_official(main_simsiam, official, args, batches))
        compare_training(report, f"{label}, fix_pred_lr {'on' if fix_pred_lr else 'off'}", initial, official, ours, run,
                         control=with_fixed_lr)
        with_fixed_lr = official.state_dict()


def compare_schedule(report: ParityReport, main_simsiam) -> None:
    """Every epoch's lr of a 100-epoch run at the official defaults (lr 0.05 x 512/256), both groups."""
    for fix_pred_lr in (True, False):
        cfg = load_config("pretrain/imagenet_r50", PRETRAIN_DEFAULTS, [f"optim.fix_pred_lr={fix_pred_lr}"])
        args = official_args(main_simsiam, cfg)
        two_parts = nn.Module()
        two_parts.encoder, two_parts.predictor = nn.Linear(2, 2), nn.Linear(2, 2)
        init_lr = scaled_lr(cfg.optim.base_lr, cfg.batch_size)
        ours = build_optimizer(two_parts, init_lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.fix_pred_lr)
        theirs = official_optimizer(two_parts, args)
        their_lrs, our_lrs = [], []
        for epoch in range(args.epochs):
            main_simsiam.adjust_learning_rate(theirs, args.lr * args.batch_size / 256, epoch, args)
            set_epoch_lr(ours, init_lr, epoch, cfg.epochs, cfg.optim.warmup_epochs)
            their_lrs.append([g["lr"] for g in theirs.param_groups])
            our_lrs.append([g["lr"] for g in ours.param_groups])
        groups = "encoder and predictor groups" if fix_pred_lr else "one group"
        report.add(f"lr schedule, {args.epochs} epochs, fix_pred_lr {'on' if fix_pred_lr else 'off'} ({groups})",
                   our_lrs, their_lrs, 1e-12, f"init lr {init_lr:g}; official epochs 0/50/99: " +
                   ", ".join(f"{their_lrs[e][0]:.6g}" for e in (0, 50, 99)))


def compare_defaults(report: ParityReport, main_simsiam) -> None:
    """Our ImageNet preset against the official argument defaults."""
    args = main_simsiam.parser.parse_args(["unused-data-dir"])
    cfg = load_config("pretrain/imagenet_r50", PRETRAIN_DEFAULTS)
    keys = ("arch", "epochs", "batch_size", "lr", "momentum", "weight_decay", "dim", "pred_dim")
    ours = dict(zip(keys, (cfg.model.arch, cfg.epochs, cfg.batch_size, cfg.optim.base_lr, cfg.optim.momentum,
                           cfg.optim.weight_decay, cfg.model.dim, cfg.model.pred_dim)))
    report.add_equal("imagenet_r50 preset = official argument defaults", ours, {k: getattr(args, k) for k in keys},
                     ", ".join(f"{k} {v}" for k, v in ours.items()) +
                     f"; fix_pred_lr {cfg.optim.fix_pred_lr} (an official flag, off by default, recommended "
                     "by its README)")


def main() -> None:
    parser = reference_parser(__doc__.splitlines()[0], "facebookresearch/simsiam")
    parser.add_argument("--commit", help="the checkout's commit, printed when it has no .git (an exported tree)")
    options = parser.parse_args()
    checkout = add_reference_to_path(options.reference, "simsiam/builder.py")
    import main_simsiam
    import simsiam.builder as builder

    torch.set_num_threads(1)
    revision = options.commit or checkout_revision(checkout)
    report = ParityReport("SimSiam pretraining: main_simsiam.py / simsiam.builder vs pretrain/",
                          f"facebookresearch/simsiam at {revision} ({checkout}); torch "
                          f"{torch.__version__}, fp32, CPU; resnet18, batch {BATCH}, dim {DIM}, pred_dim {PRED_DIM}, "
                          f"{STEPS} steps (one per epoch of a {STEPS}-epoch cosine schedule), lr as each preset's "
                          "at its own batch size")
    compare_defaults(report, main_simsiam)
    for preset in PRESETS:
        compare_preset(report, builder, main_simsiam, preset)
    compare_schedule(report, main_simsiam)
    report.finish()


if __name__ == "__main__":
    main()
