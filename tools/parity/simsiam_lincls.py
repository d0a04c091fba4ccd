"""Parity: SimSiam's ``main_lincls.py`` (model surgery, fc init, LARC-wrapped SGD, cosine lr, best
epoch) against ``simsiam-eval linear --mode protocol`` on the same checkpoint and the same batches.

    python tools/parity/simsiam_lincls.py SIMSIAM_CHECKOUT APEX_CHECKOUT

How the two sides are run (fp32, CPU):

- The checkpoint is built with the official ``simsiam.builder.SimSiam`` (ResNet-18), moved off its
  initialisation by a few SGD steps of the SimSiam loss on noise (BN statistics and the zero-initialised
  BN weights change), and saved as ``main_simsiam.py`` saves it (``module.``-prefixed state dict).
- The data is a tiny ImageFolder (``train/`` and ``val/``, main_lincls' layout) written from Fashion-MNIST.
- Ours: ``run_linear`` unchanged, ``mode=protocol``. Its image loaders are a DataLoader subclass that
  keeps a copy of every batch it yields (random crops, flips and order are ours).
- Official: ``main_lincls.main_worker`` itself, run with ``args`` from its own parser, with CPU shims
  only: ``Module.cuda``/``Tensor.cuda`` return their object, DataParallel falls back to the bare module
  (no GPU), its DataLoaders replay the batches ours drew (its ImageFolder datasets and transforms are
  still built; the transforms are compared separately on the same image and seed), LARC comes from
  the apex checkout, and torchvision's ResNet constructor builds the network with the data's number
  of classes (main_worker's ``models.__dict__[arch]()`` has ImageNet's 1000) and then re-seeds the
  global RNG, so that main_worker's ``normal_(0, 0.01)`` fc init and ours draw from the same
  generator state. Nothing of main_worker is re-stated (``args.distributed = False`` is main()'s line).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
import torchvision
from common import ParityReport, Row, add_reference_to_path, checkout_revision, max_abs_diff, reference_parser
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from simsiam_eval.checkpoints import build_backbone, read_checkpoint
from simsiam_eval.config import load_config
from simsiam_eval.data.specs import open_dataset
from simsiam_eval.data.transforms import eval_transform, linear_train_transform
from simsiam_eval.distributed import DistInfo
import simsiam_eval.linear.evaluate as linear_evaluate
from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
from simsiam_eval.linear.trainer import LinearTrainer, cosine_lr
from simsiam_eval.models import resnet

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
WEIGHT_TOLERANCE = 1e-6
ACCURACY_TOLERANCE = 1e-4     # official meters average float32 percentages
PRINTED_TOLERANCE = 1e-3      # validate() prints top-5 with 3 decimals
RUNS = {  # label -> (main_lincls flags, our config keys); batch and epochs come from the command line
    "LARS, --lr 0.1 (default)": (["--lars"], ["optimizer=lars", "base_lr=0.1"]),
    "LARS, --lr 25.6 (lr 1.6)": (["--lars", "--lr", "25.6"], ["optimizer=lars", "base_lr=25.6"]),
    "SGD, --lr 30": (["--lr", "30"], ["optimizer=sgd", "base_lr=30"]),
}


def parse_args() -> argparse.Namespace:
    parser = reference_parser(__doc__.splitlines()[0], "facebookresearch/simsiam")
    parser.add_argument("apex", type=Path, help="path of a checkout of NVIDIA/apex that still has "
                                                "apex/parallel/LARC.py (removed in cb65b8ed; e.g. its parent)")
    parser.add_argument("--data", default="fashion-mnist:/usr/share/datasets/fashion-mnist",
                        help="labelled images (kind:PATH; the @train/@test splits are used)")
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64, help="crop size of both sides' batches")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-commit", help="commit of the simsiam checkout (exported trees have no .git)")
    parser.add_argument("--apex-commit", help="commit of the apex checkout")
    return parser.parse_args()


def import_larc(apex: Path) -> tuple[type, str]:
    """apex's LARC class: through the package when it imports, else LARC.py by path (no compiled code)."""
    path = apex.resolve() / "apex" / "parallel" / "LARC.py"
    if not path.is_file():
        raise SystemExit(f"{apex}: no apex/parallel/LARC.py (apex removed it in cb65b8ed; use an older commit)")
    sys.path.insert(0, str(apex.resolve()))
    try:
        return importlib.import_module("apex.parallel.LARC").LARC, "import apex.parallel.LARC"
    except ImportError:
        for name in [m for m in sys.modules if m == "apex" or m.startswith("apex.")]:
            del sys.modules[name]
        spec = importlib.util.spec_from_file_location("apex.parallel.LARC", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for package in ("apex", "apex.parallel"):  # so that main_worker's `from apex.parallel.LARC import` finds it
            sys.modules.setdefault(package, type(sys)(package))
        sys.modules["apex.parallel.LARC"] = module
        return module.LARC, f"{path} loaded by path"


def write_image_folder(data: str, root: Path, per_class: dict[str, int]) -> list[str]:
    """The first N images of each class of each split, as PNG files in ``root/{train,val}/<class>/``."""
    splits = {"train": "train", "val": "test"}
    for folder, split in splits.items():
        dataset = open_dataset(f"{data}@{split}")
        taken = {c: 0 for c in range(len(dataset.classes))}
        for index, target in enumerate(dataset.targets):
            if taken[target] < per_class[folder]:
                out = root / folder / f"{target:02d}_{dataset.classes[target].replace('/', '-')}"
                out.mkdir(parents=True, exist_ok=True)
                dataset[index][0].save(out / f"{index:05d}.png")
                taken[target] += 1
            if min(taken.values()) >= per_class[folder]:
                break
    return sorted(p.name for p in (root / "train").iterdir())


def official_pretrained_checkpoint(builder, arch: str, path: Path, seed: int, image_size: int) -> None:
    """simsiam.builder.SimSiam, a few SGD steps of the SimSiam loss on noise, saved as main_simsiam does."""
    torch.manual_seed(seed)
    model = builder.SimSiam(torchvision.models.__dict__[arch], 2048, 512)
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=1e-4)
    cosine = nn.CosineSimilarity(dim=1)
    for _ in range(3):
        x1, x2 = torch.randn(2, 8, 3, image_size, image_size)
        p1, p2, z1, z2 = model(x1, x2)
        loss = -(cosine(p1, z2).mean() + cosine(p2, z1).mean()) * 0.5
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # DistributedDataParallel's names
    torch.save({"epoch": 1, "arch": arch, "state_dict": state, "optimizer": optimizer.state_dict()}, path)


class RecordingDataLoader(DataLoader):
    """A DataLoader that keeps a copy of every batch it yields, one list per pass (= per epoch)."""

    passes: dict[str, list[list[tuple[torch.Tensor, torch.Tensor]]]] = {"train": [], "val": []}

    def __iter__(self):
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.passes["train" if isinstance(self.sampler, DistributedSampler) else "val"].append(batches)
        for images, labels in super().__iter__():
            batches.append((images.clone(), labels.clone()))
            yield images, labels


def run_ours(checkpoint: Path, root: Path, out: Path, options: argparse.Namespace, keys: list[str]) -> dict:
    """``run_linear`` in protocol mode; returns its record, history, fc before/after and the batches it drew."""
    RecordingDataLoader.passes = {"train": [], "val": []}
    captured: dict = {}
    build_classifier, load_frozen_backbone = linear_evaluate.build_classifier, linear_evaluate.load_frozen_backbone

    def keep_initial_fc(*args, **kwargs):
        fc = build_classifier(*args, **kwargs)
        captured["fc"], captured["fc_init"] = fc, {k: v.clone() for k, v in fc.state_dict().items()}
        return fc

    def keep_backbone(*args, **kwargs):
        result = load_frozen_backbone(*args, **kwargs)
        captured["backbone"] = result[1]
        return result

    values = {"checkpoint": checkpoint, "train": root / "train", "val": root / "val", "mode": "protocol",
              "epochs": options.epochs, "batch_size": options.batch_size, "image_size": options.image_size,
              "resize": round(options.image_size * 256 / 224), "workers": 0, "device": "cpu", "amp": False,
              "seed": options.seed, "resume": False, "progress": False, "tensorboard": False, "cache": False,
              "output_dir": out}
    cfg = load_config(None, LINEAR_DEFAULTS, [f"{k}={v}" for k, v in values.items()] + keys)
    with mock.patch.object(linear_evaluate, "DataLoader", RecordingDataLoader), \
            mock.patch.object(linear_evaluate, "build_classifier", keep_initial_fc), \
            mock.patch.object(linear_evaluate, "load_frozen_backbone", keep_backbone):
        record = linear_evaluate.run_linear(cfg, CPU)
    state = torch.load(out / LinearTrainer.STATE_NAME, map_location="cpu", weights_only=True)
    backbone = captured["backbone"]
    trainable = ([f"fc.{n}" for n, p in captured["fc"].named_parameters() if p.requires_grad]
                 + [n for n, p in backbone.named_parameters() if p.requires_grad])
    return {"record": record, "history": state["history"], "fc": state["fc"], "fc_init": captured["fc_init"],
            "trainable": sorted(trainable), "batches": RecordingDataLoader.passes}


class ReplayLoader:
    """Stands in for main_worker's DataLoader: each pass yields the next recorded epoch of batches."""

    def __init__(self, passes: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.passes, self.next = passes, 0

    def __len__(self) -> int:
        return len(self.passes[min(self.next, len(self.passes) - 1)])

    def __iter__(self):
        batches = self.passes[min(self.next, len(self.passes) - 1)]
        self.next += 1
        return iter(batches)


def run_official(main_lincls, arch: str, data_root: Path, num_classes: int, checkpoint: Path, out: Path,
                 flags: list[str], options: argparse.Namespace, batches: dict) -> dict:
    """main_lincls.main_worker on CPU with the shims listed in the module docstring."""
    args = main_lincls.parser.parse_args([str(data_root), "-a", arch, "--pretrained", str(checkpoint),
                                          "--epochs", str(options.epochs), "-b", str(options.batch_size),
                                          "--workers", "0", "--print-freq", "1000000", *flags])
    args.distributed = False  # main() sets it from --world-size / --multiprocessing-distributed
    seen: dict = {"lr": [], "acc1": [], "transforms": {}, "loaded": None}
    build_resnet = torchvision.models.__dict__[arch]

    def seeded_resnet():
        model = build_resnet(num_classes=num_classes)  # main_worker's models.__dict__[arch]() has 1000
        torch.manual_seed(options.seed)  # main_worker draws the fc init from the global RNG next
        return model

    def replay(dataset, *a, **k):
        split = Path(dataset.root).name
        seen["transforms"][split] = dataset.transform
        return ReplayLoader(batches[split])

    load_state_dict = torchvision.models.ResNet.load_state_dict

    def keep_loaded(model, state_dict, strict=True, **k):
        result = load_state_dict(model, state_dict, strict=strict, **k)
        seen["loaded"] = (model, sorted(state_dict), result)
        return result

    train, validate = main_lincls.train, main_lincls.validate

    def keep_lr(loader, model, criterion, optimizer, epoch, a):
        seen["lr"].append(optimizer.param_groups[0]["lr"])
        if "fc_init" not in seen:
            fc = seen["loaded"][0].fc
            seen["fc_init"] = {"weight": fc.weight.detach().clone(), "bias": fc.bias.detach().clone()}
        return train(loader, model, criterion, optimizer, epoch, a)

    def keep_acc(*a, **k):
        acc1 = validate(*a, **k)
        seen["acc1"].append(float(acc1))
        return acc1

    printed = io.StringIO()
    main_lincls.best_acc1 = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch.nn.Module, "cuda", lambda self, *a, **k: self))
        stack.enter_context(mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self))
        stack.enter_context(mock.patch.object(torch.utils.data, "DataLoader", replay))
        stack.enter_context(mock.patch.dict(torchvision.models.__dict__, {arch: seeded_resnet}))
        stack.enter_context(mock.patch.object(torchvision.models.ResNet, "load_state_dict", keep_loaded))
        stack.enter_context(mock.patch.object(main_lincls, "train", keep_lr))
        stack.enter_context(mock.patch.object(main_lincls, "validate", keep_acc))
        stack.enter_context(contextlib.redirect_stdout(printed))
        previous = os.getcwd()
        os.chdir(out)  # save_checkpoint writes checkpoint.pth.tar and model_best.pth.tar here
        try:
            main_lincls.main_worker(None, 1, args)
        finally:
            os.chdir(previous)
    model, loaded_keys, result = seen["loaded"]
    best = torch.load(out / "model_best.pth.tar", map_location="cpu", weights_only=True)
    top5 = [float(m) for m in re.findall(r"\* Acc@1 \S+ Acc@5 (\S+)", printed.getvalue())]
    return {"model": model, "loaded_keys": loaded_keys, "missing": sorted(result.missing_keys),
            "unexpected": sorted(result.unexpected_keys), "lr": seen["lr"], "acc1": seen["acc1"], "top5": top5,
            "best_acc1": float(main_lincls.best_acc1), "best_epoch": int(best["epoch"]),
            "fc_init": seen["fc_init"], "transforms": seen["transforms"],
            "sanity_check": "=> sanity check passed." in printed.getvalue(),
            "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad)}


def compare_surgery(report: ParityReport, checkpoint: Path, official: dict) -> None:
    """Which tensors each side takes from the checkpoint, what stays missing, and their values."""
    ckpt = read_checkpoint(checkpoint)
    ours_module_keys = set(resnet(ckpt.arch, ckpt.stem, ckpt.width).state_dict())
    source = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    official_dropped = sorted(set(source) - {f"module.encoder.{k}" for k in official["loaded_keys"]})
    report.add_equal("surgery: tensors loaded", sorted(ckpt.state_dict), official["loaded_keys"],
                     f"{len(official['loaded_keys'])} keys")
    report.add_equal("surgery: source keys dropped", sorted(ckpt.dropped), official_dropped,
                     ", ".join(f"{k} x{n}" for k, n in sorted(ckpt.dropped_groups.items())))
    report.add_equal("surgery: missing keys", sorted(ours_module_keys - set(ckpt.state_dict)) + ckpt.filled,
                     official["missing"], str(official["missing"]))
    report.add_equal("surgery: unexpected keys", sorted(set(ckpt.state_dict) - ours_module_keys),
                     official["unexpected"], str(official["unexpected"]))
    ours = build_backbone(ckpt).state_dict()
    theirs = {k: v for k, v in official["model"].state_dict().items() if not k.startswith("fc.")}
    same_names = sorted(ours) == sorted(theirs)
    diff = max((max_abs_diff(ours[k], theirs[k]) for k in ours), default=0.0) if same_names else float("inf")
    report.rows.append(Row("surgery: backbone tensors (values)", diff, 0.0, f"{len(ours)} tensors"))


def compare_transforms(report: ParityReport, official: dict, image: Image.Image, seeds: int = 5) -> None:
    """main_lincls' ImageFolder transforms (224 px) against ours on the same image and RNG seed."""
    pairs = {"train transform (224, RandomResizedCrop+flip)": (official["transforms"]["train"],
                                                               linear_train_transform(224)),
             "val transform (224, Resize 256+CenterCrop)": (official["transforms"]["val"], eval_transform(224))}
    for what, (theirs, ours) in pairs.items():
        diffs = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            a = theirs(image)
            torch.manual_seed(seed)
            diffs.append(max_abs_diff(ours(image), a))
        report.rows.append(Row(what, max(diffs), 0.0, f"same tensors for {seeds} seeds"))


def compare_run(report: ParityReport, label: str, ours: dict, official: dict) -> None:
    history, model = ours["history"], official["model"]
    steps = sum(len(epoch) for epoch in ours["batches"]["train"])
    report.add_equal(f"{label}: trainable parameters", ours["trainable"], official["trainable"],
                     ", ".join(official["trainable"]))
    report.add(f"{label}: fc init", torch.cat([ours["fc_init"]["weight"].flatten(), ours["fc_init"]["bias"]]),
               torch.cat([official["fc_init"]["weight"].flatten(), official["fc_init"]["bias"]]), 0.0,
               f"weight std {official['fc_init']['weight'].std().item():.5f}, bias all 0: "
               f"{bool((official['fc_init']['bias'] == 0).all())}")
    report.add(f"{label}: lr per epoch", [row["lr"] for row in history], official["lr"], 1e-12,
               ", ".join(f"{lr:.6g}" for lr in official["lr"]))
    for name in ("weight", "bias"):
        theirs = getattr(model.fc, name).detach()
        change = (theirs - official["fc_init"][name]).abs().max().item()
        report.add(f"{label}: fc.{name} after {steps} steps", ours["fc"][name], theirs, WEIGHT_TOLERANCE,
                   f"{len(history)} epochs; largest change from init {change:.3g}")
    report.add(f"{label}: val top-1 per epoch", [row["top1"] for row in history], official["acc1"],
               ACCURACY_TOLERANCE, ", ".join(f"{a:.2f}" for a in official["acc1"]))
    report.add(f"{label}: val top-5 per epoch (printed)", [row["top5"] for row in history], official["top5"],
               PRINTED_TOLERANCE, ", ".join(f"{a:.2f}" for a in official["top5"]))
    metrics = ours["record"]["metrics"]
    report.add(f"{label}: best top-1 (record vs best_acc1)", metrics["top1"], official["best_acc1"],
               ACCURACY_TOLERANCE, f"{official['best_acc1']:.2f}")
    report.add_equal(f"{label}: best epoch (record vs model_best.pth.tar)", int(metrics["best_epoch"]),
                     official["best_epoch"], str(official["best_epoch"]))
    report.add_equal(f"{label}: backbone unchanged (ours vs sanity_check)",
                     ours["record"]["settings"].get("backbone_unchanged"), official["sanity_check"],
                     "record: backbone_unchanged; main_lincls: sanity check passed")


def compare_long_schedule(report: ParityReport, main_lincls, init_lr: float = 1.6, epochs: int = 90) -> None:
    """adjust_learning_rate against our cosine_lr over the published 90-epoch schedule."""
    group = {"lr": 0.0}
    optimizer = argparse.Namespace(param_groups=[group])
    theirs = []
    for epoch in range(epochs):
        main_lincls.adjust_learning_rate(optimizer, init_lr, epoch, argparse.Namespace(epochs=epochs))
        theirs.append(group["lr"])
    report.add(f"lr per epoch, {epochs}-epoch schedule at lr {init_lr}", [cosine_lr(init_lr, e, epochs)
                                                                        for e in range(epochs)], theirs, 1e-12,
               f"first {theirs[0]:g}, last {theirs[-1]:.3g}")


def main() -> None:
    options = parse_args()
    checkout = add_reference_to_path(options.reference, "main_lincls.py")
    larc, larc_source = import_larc(options.apex)
    main_lincls = importlib.import_module("main_lincls")
    builder = importlib.import_module("simsiam.builder")
    commit = options.reference_commit or checkout_revision(checkout)
    apex_commit = options.apex_commit or checkout_revision(options.apex)
    report = ParityReport("SimSiam main_lincls.py vs simsiam-eval linear --mode protocol",
                          f"facebookresearch/simsiam {commit} (main_lincls.py, simsiam/builder.py); "
                          f"NVIDIA/apex {apex_commit} (apex/parallel/LARC.py)")
    print(f"LARC: {larc.__module__} ({larc_source})")
    print(f"data: {options.data}, {options.train_per_class}/{options.val_per_class} images per class, "
          f"{options.image_size} px, batch {options.batch_size}, {options.epochs} epochs, {options.arch}, fp32 CPU")
    print("official side: main_lincls.main_worker itself, nothing re-stated; shims: .cuda() is a no-op, its "
          "DataLoaders replay our batches, its ResNet gets the data's class count (it hard-codes 1000) and "
          "the global RNG is re-seeded before its fc init\n")
    with tempfile.TemporaryDirectory(prefix="parity-lincls-") as tmp:
        tmp = Path(tmp)
        classes = write_image_folder(options.data, tmp / "data", {"train": options.train_per_class,
                                                                   "val": options.val_per_class})
        checkpoint = tmp / "checkpoint_0000.pth.tar"
        official_pretrained_checkpoint(builder, options.arch, checkpoint, options.seed, options.image_size)
        for index, (label, (flags, keys)) in enumerate(RUNS.items()):
            (tmp / f"official{index}").mkdir()
            ours = run_ours(checkpoint, tmp / "data", tmp / f"ours{index}", options, keys)
            official = run_official(main_lincls, options.arch, tmp / "data", len(classes), checkpoint,
                                    tmp / f"official{index}", flags, options, ours["batches"])
            if index == 0:
                compare_surgery(report, checkpoint, official)
                image = Image.open(next((tmp / "data" / "train" / classes[0]).iterdir())).convert("RGB")
                compare_transforms(report, official, image)
                compare_long_schedule(report, main_lincls)
            compare_run(report, label, ours, official)
    report.finish()


if __name__ == "__main__":
    main()
