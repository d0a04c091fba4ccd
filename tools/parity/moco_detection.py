#!/usr/bin/env python
"""Parity with MoCo's detection recipe (facebookresearch/moco at 87e36d3, ``detection/``), on CPU.

1. Conversion: a MoCo v2 checkpoint built by MoCo's own ``moco.builder.MoCo`` (ResNet-50, ``mlp=True``)
   and saved as ``main_moco.py`` saves it (DDP state dict, ``module.encoder_q/k.*``, optimizer) is converted
   by MoCo's ``convert-pretrain-to-detectron2.py`` and by ``simsiam-eval convert --to detectron2``: key
   sets (MoCo's extra ``stem.fc.*``, its MLP head, listed), arrays, pickle metadata.
2. Configs: MoCo's ``configs/`` chains against ours (``configs/detectron2/``), resolved by Detectron2 and
   compared key by key.
3. Training: MoCo's ``train_net.py`` (its ``Res5ROIHeadsExtraNorm``) and ``simsiam-eval transfer`` fine-tune
   the same checkpoint on the shapes detection data (VOC layout) with the same smoke overrides and seed:
   losses and learning rate of every iteration, every detector tensor before the first step and after the
   last (``model_final.pth``), and the final VOC AP. MoCo's side runs in a subprocess that registers the
   data with Detectron2's own VOC loader under the names the config uses, then runs MoCo's script as its
   command line does. Both processes record raw per-iteration values through one observing hook
   appended to Detectron2's DefaultTrainer (a ``sitecustomize`` in the scratch folder): Detectron2's
   ``metrics.json`` holds 20-iteration medians only.

    python tools/parity/moco_detection.py /path/to/moco [--iterations 6] [--seed 3] [--official-runs 2]

Prints one table per part (tools/parity/common.py) and exits 1 on any mismatch.

CI guards (no MoCo checkout needed): part 1, tests/test_convert.py::test_moco_v2_checkpoint_converts_to_mocos_pkl_
without_its_fc (MoCo's converter re-stated with tests/moco_reference.py) and ::test_torchvision_detectron2_torchvision_
round_trip_is_exact; part 2, tests/test_transfer_detectron2.py::test_recipe_resolves_to_mocos_config_key_by_key (MoCo's
YAML values written out); part 3, ::test_extra_norm_head_equals_mocos (the head re-stated: same tensors, same losses
on one batch) and ::test_voc_metric_equals_detectron2_voc_eval (the AP rows).
"""
from __future__ import annotations

import json
import os
import pickle
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    REPO_ROOT,
    ParityReport,
    Row,
    add_reference_to_path,
    checkout_revision,
    reference_parser,
)

MOCO_COMMIT = "87e36d3"
# MoCo's configs and ours for the same recipe.
CONFIG_PAIRS = (("Faster R-CNN R50-C4, VOC07+12", "pascal_voc_R_50_C4_24k_moco.yaml", "pascal_voc0712_R_50_C4.yaml"),
                ("Mask R-CNN R50-C4, COCO 2x", "coco_R_50_C4_2x_moco.yaml", "coco_R_50_C4_2x.yaml"))
# Keys whose values may differ between the two resolved configs: is (ours, MoCo's) the explained case?
EXPLAINED = {
    # MoCo's placeholder 'See Instructions' vs ours empty: every run sets it
    "MODEL.WEIGHTS": lambda ours, theirs: True,
    # ours only (transfer/backbone.py); 'imagenet' is Detectron2's own BasicStem
    "MODEL.RESNETS.STEM_TYPE": lambda ours, theirs: ours == "imagenet" and theirs is None,
    # our build_config falls back to the CPU on a machine without CUDA; MoCo's cfg keeps 'cuda'
    "MODEL.DEVICE": lambda ours, theirs: (ours, theirs) == ("cpu", "cuda") and not torch.cuda.is_available(),
}
RECORD_ENV = "PARITY_DETECTRON2_RECORD"
LAUNCH_OFFICIAL = "--launch-official"


# ----------------------------------------------------------------------------- part 1: conversion
def ddp_state_dict(model: torch.nn.Module, init_file: Path) -> dict:
    """``DistributedDataParallel(model).state_dict()`` (every key behind ``module.``), as the official training
    scripts save it, on a one-process gloo group (started once per process)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    return torch.nn.parallel.DistributedDataParallel(model).state_dict()


def build_moco_checkpoint(path: Path, seed: int) -> torch.nn.Module:
    """MoCo v2 (``main_moco.py --mlp --moco-t 0.2``) with MoCo's builder (``moco`` importable), two SGD steps of
    the query encoder (non-trivial BN statistics, momentum buffers) and the key encoder's momentum update,
    saved as ``main_moco.py`` saves it; returns the MoCo module."""
    import moco.builder
    import torchvision.models as models

    torch.manual_seed(seed)
    model = moco.builder.MoCo(models.__dict__["resnet50"], 128, 65536, 0.999, 0.2, True)
    optimizer = torch.optim.SGD(model.parameters(), 0.03, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        loss = model.encoder_q(torch.randn(4, 3, 64, 64)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model._momentum_update_key_encoder()
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": ddp_state_dict(model, path.parent / "dist_init"),
                "optimizer": optimizer.state_dict()}, path)
    return model


def run(command: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> float:
    """Run a command with its output in ``log``; seconds taken. Exits with the log's tail on failure."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"failed (exit {code}): {' '.join(command)}\n{tail}")
    return time.perf_counter() - start


def our_env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra.get("PYTHONPATH"), str(REPO_ROOT)) if p)
    return env


def load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:  # files written by this run
        return pickle.load(f)


def compare_conversions(moco: Path, ckpt: Path, scratch: Path, encoder_q: dict) -> tuple[ParityReport, Path, Path]:
    """Part 1: both converters on the same checkpoint; returns the report and both .pkl files."""
    report = ParityReport("MoCo v2 checkpoint -> Detectron2 .pkl: MoCo's converter vs simsiam-eval convert",
                          f"facebookresearch/moco {MOCO_COMMIT}, detection/convert-pretrain-to-detectron2.py")
    theirs, ours = scratch / "moco_converted.pkl", scratch / "ours_converted.pkl"
    run([sys.executable, str(moco / "detection" / "convert-pretrain-to-detectron2.py"), str(ckpt), str(theirs)],
        scratch / "moco_convert.log", env=our_env(), cwd=scratch)
    run([sys.executable, "-m", "simsiam_eval", "convert", str(ckpt), str(ours), "--to", "detectron2"],
        scratch / "ours_convert.log", env=our_env(), cwd=scratch)
    a, b = load_pickle(ours), load_pickle(theirs)
    fc = {"stem." + k for k in encoder_q if k.startswith("fc.")}
    extra = set(b["model"]) - set(a["model"])
    report.add_equal("MoCo's keys not in ours = its MLP head as stem.fc.* (known defect)", sorted(extra), sorted(fc),
                     f"MoCo writes {len(b['model'])} keys, {len(extra)} of them {', '.join(sorted(extra))}")
    report.add_equal("key sets, MoCo's stem.fc.* set aside", sorted(a["model"]), sorted(set(b["model"]) - fc),
                     f"{len(a['model'])} keys")
    common_keys = sorted(set(a["model"]) & set(b["model"]))

    def kinds(model: dict) -> list:
        return [(type(model[k]).__name__, model[k].dtype.str, model[k].shape) for k in common_keys]

    report.add_equal("array types, dtypes and shapes", kinds(a["model"]), kinds(b["model"]), "numpy arrays")
    diff = max(float(abs(a["model"][k].astype("float64") - b["model"][k].astype("float64")).max(initial=0))
               for k in common_keys)
    report.rows.append(Row(f"arrays (all {len(common_keys)}, BN statistics included)", diff, 0.0))
    report.add_equal("matching_heuristics", a.get("matching_heuristics"), b.get("matching_heuristics"),
                     f"both {b.get('matching_heuristics')}")
    ours_only = sorted(set(a) - set(b))
    authors = f"__author__ {a['__author__']!r} vs {b['__author__']!r} (by design)"
    report.add_equal("pickle's top-level keys besides ours' arch/stem/width",
                     sorted(set(a) - {"arch", "stem", "width"}), sorted(b),
                     f"{authors}; ours adds {', '.join(f'{k}={a[k]!r}' for k in ours_only)}")
    report.add_equal("pkl's arch/stem/width say what its tensors are", [a.get(k) for k in ("arch", "stem", "width")],
                     ["resnet50", "imagenet", 64])
    return report, theirs, ours


# ----------------------------------------------------------------------------- part 2: configs
def moco_config(moco: Path, name: str) -> dict:
    """MoCo's train_net.py setup(): Detectron2's defaults, then the YAML file (with its _BASE_ chain)."""
    from detectron2.config import get_cfg

    from simsiam_eval.config import flatten_values

    cfg = get_cfg()
    cfg.merge_from_file(str(moco / "detection" / "configs" / name))
    return flatten_values(cfg)


def our_config(name: str) -> dict:
    """Our trainer's config: transfer.trainer.build_config (defaults + STEM_TYPE, the YAML chain)."""
    from simsiam_eval.config import flatten_values
    from transfer.configs import config_dir
    from transfer.trainer import build_config

    return flatten_values(build_config(str(config_dir() / name), []))


def compare_configs(moco: Path) -> ParityReport:
    report = ParityReport("Resolved Detectron2 configs: MoCo's detection/configs vs ours (configs/detectron2)",
                          f"facebookresearch/moco {MOCO_COMMIT}, detection/configs")
    for title, theirs_name, ours_name in CONFIG_PAIRS:
        theirs, ours = moco_config(moco, theirs_name), our_config(ours_name)
        keys = sorted(set(theirs) | set(ours))
        differ = {k: (ours.get(k), theirs.get(k)) for k in keys if ours.get(k) != theirs.get(k)}
        unexplained = {k: v for k, v in differ.items() if k not in EXPLAINED or not EXPLAINED[k](*v)}
        listed = "; ".join(f"{k}: ours {o!r} / MoCo's {t!r}" for k, (o, t) in differ.items())
        report.add_equal(f"{title}: {ours_name} vs {theirs_name}, {len(keys)} keys", unexplained, {},
                         f"differences: {listed or 'none'}")
    return report


# ----------------------------------------------------------------------------- part 3: training
def install_recorder(folder: str) -> None:
    """Append an observing hook to every Detectron2 DefaultTrainer (MoCo's Trainer and ours subclass it):
    the detector's tensors before the first step, raw losses and lr of every iteration (JSON lines) and
    the final evaluation. It reads only; the training is untouched."""
    from detectron2.engine import DefaultTrainer, HookBase
    from detectron2.utils import comm

    out = Path(folder)

    class Recorder(HookBase):
        def before_train(self):
            if comm.is_main_process():
                model = getattr(self.trainer.model, "module", self.trainer.model)
                torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "initial.pth")

        def after_step(self):
            if not comm.is_main_process():
                return
            row = {"iter": self.trainer.iter}
            for name, history in self.trainer.storage.histories().items():
                value, iteration = history.values()[-1]
                if ("loss" in name or name == "lr") and iteration == self.trainer.iter:
                    row[name] = value
            with open(out / "steps.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

        def after_train(self):
            if comm.is_main_process():
                results = getattr(self.trainer, "_last_eval_results", None)
                (out / "eval.json").write_text(json.dumps(results or {}))

    original = DefaultTrainer.build_hooks

    def build_hooks(self):
        return original(self) + [Recorder()]

    DefaultTrainer.build_hooks = build_hooks


SITECUSTOMIZE = f'''# written by tools/parity/moco_detection.py: records raw per-iteration values of Detectron2 trainers
import os, sys
if os.environ.get("{RECORD_ENV}"):
    sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
    import moco_detection
    moco_detection.install_recorder(os.environ["{RECORD_ENV}"])
'''


def launch_official(argv: list[str]) -> None:
    """(Subprocess.) Register the shapes VOC splits with Detectron2's own VOC loader under the names the
    config uses, then run MoCo's train_net.py as its command line does (its ``launch``, 1 process)."""
    moco, voc, train_name, test_name, *train_net_args = argv
    from detectron2.data.datasets.pascal_voc import register_pascal_voc

    classes = [line.strip() for line in (Path(voc) / "classes.txt").read_text().splitlines() if line.strip()]
    for name, split in ((train_name, "train"), (test_name, "val")):
        register_pascal_voc(name, voc, split, 2012, classes)
    script = str(Path(moco) / "detection" / "train_net.py")
    sys.argv = [script, *train_net_args]
    runpy.run_path(script, run_name="__main__")


def smoke_overrides(voc: Path, iterations: int) -> tuple[list[str], str, str]:
    """The KEY VALUE overrides both sides get (CPU, 128-px images, few proposals and RoIs, batch 2, one lr
    step inside the run), and the train/test dataset names (voc:FOLDER@SPLIT, which our trainer reads)."""
    train, test = f"voc:{voc}@train", f"voc:{voc}@val"
    opts = {
        "MODEL.DEVICE": "cpu", "MODEL.ROI_HEADS.NUM_CLASSES": "6",
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE": "64", "MODEL.RPN.PRE_NMS_TOPK_TRAIN": "300",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": "100", "MODEL.RPN.PRE_NMS_TOPK_TEST": "300",
        "MODEL.RPN.POST_NMS_TOPK_TEST": "20", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "8",
        "INPUT.MIN_SIZE_TRAIN": "(128,)", "INPUT.MAX_SIZE_TRAIN": "128", "INPUT.MIN_SIZE_TEST": "128",
        "INPUT.MAX_SIZE_TEST": "128", "DATASETS.TRAIN": repr((train,)), "DATASETS.TEST": repr((test,)),
        "SOLVER.IMS_PER_BATCH": "2", "SOLVER.BASE_LR": "0.0025", "SOLVER.MAX_ITER": str(iterations),
        "SOLVER.STEPS": repr((iterations - 2,)), "SOLVER.WARMUP_ITERS": "2", "SOLVER.CHECKPOINT_PERIOD": "100000",
        "TEST.DETECTIONS_PER_IMAGE": "10", "TEST.PRECISE_BN.NUM_ITER": "2", "DATALOADER.NUM_WORKERS": "1",
        "CUDNN_BENCHMARK": "False",
    }
    return [part for item in opts.items() for part in item], train, test


def record_env(scratch: Path, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return our_env(PYTHONPATH=str(scratch / "site"), **{RECORD_ENV: str(folder)})


def train_official(moco: Path, scratch: Path, weights: Path, voc: Path, iterations: int, seed: int,
                   name: str) -> tuple[Path, float]:
    """MoCo's train_net.py on MoCo's converted weights; (its output folder, seconds)."""
    out = scratch / name
    opts, train, test = smoke_overrides(voc, iterations)
    config = moco / "detection" / "configs" / "pascal_voc_R_50_C4_24k_moco.yaml"
    command = [sys.executable, str(Path(__file__).resolve()), LAUNCH_OFFICIAL, str(moco), str(voc), train, test,
               "--config-file", str(config), "--num-gpus", "1", *opts, "MODEL.WEIGHTS", str(weights),
               "OUTPUT_DIR", str(out), "SEED", str(seed)]
    seconds = run(command, scratch / f"{name}.log", env=record_env(scratch, out), cwd=scratch)
    return out, seconds


def train_ours(scratch: Path, ckpt: Path, voc: Path, iterations: int, seed: int) -> tuple[Path, float]:
    """``simsiam-eval transfer --task voc0712`` on the MoCo checkpoint (our conversion, checks, trainer); one
    trial with seed ``seed``; (the trial folder, seconds)."""
    out = scratch / "ours"
    opts, _, _ = smoke_overrides(voc, iterations)
    command = [sys.executable, "-m", "simsiam_eval", "transfer", "--checkpoint", str(ckpt), "--task", "voc0712",
               "--trials", "1", "--seed", str(seed), "--num-gpus", "1", "--output-dir", str(out),
               "--results", str(scratch / "ours.db"), "--quiet", *opts]
    seconds = run(command, scratch / "ours.log", env=record_env(scratch, out / "trial1"), cwd=scratch)
    return out / "trial1", seconds


def read_steps(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]


def compare_runs(report: ParityReport, label: str, ours: Path, theirs: Path, iterations: int,
                 tolerance: float = 0.0) -> None:
    """Rows: every loss term and lr over all iterations, the detector's tensors before and after."""
    a, b = read_steps(ours), read_steps(theirs)
    report.add_equal(f"{label}: iterations recorded", [r["iter"] for r in a], [r["iter"] for r in b],
                     f"{len(a)} (SOLVER.MAX_ITER {iterations})")
    names = sorted({k for r in a + b for k in r} - {"iter"})
    report.add_equal(f"{label}: loss terms", sorted({k for r in a for k in r}), sorted({k for r in b for k in r}),
                     ", ".join(n for n in names if n != "lr"))
    for name in names:
        ours_values = [r.get(name, float("nan")) for r in a]
        theirs_values = [r.get(name, float("nan")) for r in b]
        first = f"iteration 1: {ours_values[0]:.6g} vs {theirs_values[0]:.6g}" if a and b else ""
        last = f"; iteration {len(a)}: {ours_values[-1]:.6g} vs {theirs_values[-1]:.6g}" if a and b else ""
        report.add(f"{label}: {name}, every iteration", ours_values, theirs_values, tolerance, first + last)
    final = f"after {iterations} iterations + PreciseBN (model_final.pth)"
    for when, file, key in (("before the first step", "initial.pth", None), (final, "model_final.pth", "model")):
        x, y = (torch.load(folder / file, map_location="cpu", weights_only=True) for folder in (ours, theirs))
        x, y = (x[key], y[key]) if key else (x, y)
        report.add_equal(f"{label}: detector tensor names {when}", sorted(x), sorted(y), f"{len(x)} tensors")
        diff = max((float((x[k].double() - y[k].double()).abs().max()) for k in x if k in y and x[k].numel()),
                   default=float("inf"))
        report.rows.append(Row(f"{label}: detector tensors {when}", diff, tolerance))


def compare_training(moco: Path, scratch: Path, ckpt: Path, moco_weights: Path, iterations: int, seed: int,
                     official_runs: int) -> ParityReport:
    from simsiam_eval.data.shapes import ShapesSettings, write_shapes_dataset

    report = ParityReport(f"Detection fine-tuning, {iterations} CPU iterations: MoCo's train_net.py vs "
                          f"simsiam-eval transfer", f"facebookresearch/moco {MOCO_COMMIT}, detection/train_net.py "
                                                    f"+ configs/pascal_voc_R_50_C4_24k_moco.yaml")
    root = write_shapes_dataset(scratch / "data" / "shapes",
                                ShapesSettings(train_per_class=1, val_per_class=1, image_size=16, detection_train=8,
                                               detection_val=6, detection_size=128))  # every class in val
    voc = (root / "voc").resolve()
    (scratch / "site").mkdir(exist_ok=True)
    (scratch / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    official = [train_official(moco, scratch, moco_weights, voc, iterations, seed, f"moco{i + 1}")
                for i in range(official_runs)]
    ours, seconds = train_ours(scratch, ckpt, voc, iterations, seed)
    print(f"training: MoCo {', '.join(f'{s:.0f} s' for _, s in official)}, ours {seconds:.0f} s", flush=True)
    compare_runs(report, "ours vs MoCo", ours, official[0][0], iterations)
    if official_runs > 1:
        compare_runs(report, "MoCo run 2 vs run 1", official[1][0], official[0][0], iterations)
    record = json.loads((ours / "record.json").read_text())
    theirs = json.loads((official[0][0] / "eval.json").read_text()).get("bbox", {})
    for metric in ("AP", "AP50", "AP75"):
        report.add(f"final VOC box {metric} (our record vs MoCo's PascalVOCDetectionEvaluator)",
                   record["metrics"].get(metric, float("nan")), theirs.get(metric, float("nan")), 1e-6,
                   f"{record['metrics'].get(metric, float('nan')):.4g} vs {theirs.get(metric, float('nan')):.4g}")
    return report


# ----------------------------------------------------------------------------- main
def detectron2_missing() -> str:
    """Why Detectron2 cannot run here ('' when it can)."""
    try:
        with warnings.catch_warnings():  # its import warns about torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            import detectron2._C  # noqa: F401
    except ImportError as exc:
        return f"detectron2 not importable ({exc})"
    return ""


def not_run(title: str, reason: str) -> ParityReport:
    """A report whose one row says why nothing was compared (a mismatch: not run is not equal)."""
    report = ParityReport(title, f"facebookresearch/moco {MOCO_COMMIT}")
    report.rows.append(Row("everything in this part", float("inf"), 0.0, f"not run: {reason}"))
    return report


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == LAUNCH_OFFICIAL:
        launch_official(sys.argv[2:])
        return 0
    parser = reference_parser(__doc__.split("\n")[0], "facebookresearch/moco (at 87e36d3, which has detection/)")
    parser.add_argument("--iterations", type=int, default=6, help="fine-tuning iterations (default %(default)s)")
    parser.add_argument("--seed", type=int, default=3, help="SEED of both trainers (default %(default)s)")
    parser.add_argument("--official-runs", type=int, default=1,
                        help="runs of MoCo's train_net.py; 2 also compares MoCo with itself (its run-to-run "
                             "difference on this CPU) (default %(default)s)")
    parser.add_argument("--workdir", type=Path, help="empty scratch folder to use and keep (default: a temporary "
                                                     "one, removed at the end)")
    args = parser.parse_args()
    if args.iterations < 5:
        parser.error("--iterations must be at least 5")
    moco = add_reference_to_path(args.reference, "detection/convert-pretrain-to-detectron2.py")
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty")
    scratch = (args.workdir or Path(tempfile.mkdtemp(prefix="moco_detection_parity_"))).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"MoCo checkout {moco} (git: {checkout_revision(moco)}), scratch {scratch}", flush=True)
    try:
        ckpt = scratch / "checkpoint_0199.pth.tar"
        encoder_q = build_moco_checkpoint(ckpt, args.seed).encoder_q.state_dict()
        conversion, moco_weights, _ = compare_conversions(moco, ckpt, scratch, encoder_q)
        reports = [conversion]
        print(conversion.table() + "\n", flush=True)
        missing = detectron2_missing()
        for title, compare in (("Resolved Detectron2 configs", lambda: compare_configs(moco)),
                               ("Detection fine-tuning", lambda: compare_training(
                                   moco, scratch, ckpt, moco_weights, args.iterations, args.seed, args.official_runs))):
            reports.append(not_run(title, missing) if missing else compare())
            print(reports[-1].table() + "\n", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 1 if any(not row.ok for report in reports for row in report.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
