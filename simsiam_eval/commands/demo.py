"""``simsiam-eval demo [--output-dir DIR]``: the whole toolkit end to end on CPU in a few minutes.

Shapes data -> SimSiam pretraining (kNN monitor) -> kNN and cached linear probe of the checkpoint and
of two baselines evaluated the same way (the run's own initial weights, the controlled "no pretraining"
comparison, and torchvision's default random init) -> Detectron2 conversion -> a short detection
fine-tune when Detectron2 is installed -> comparison table and plots. A re-run reuses what is done.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

PRETRAIN_PRESET = "pretrain/shapes_cpu"
LINEAR_TRIALS = 3
PRETRAINED_NAME = "SimSiam (demo)"
# The cached linear probe with plain SGD: on a 1200-image training set LARS at batch 4096 takes one
# step per epoch, and MoCo's main_lincls SGD lr of 30 diverges on randomly initialised features. lr 1.0:
# pretrained pool5 features are ~4x smaller in norm than torchvision-init ones, and 100 epochs at
# lr 0.1 leave their classifier unconverged (lr 1.0 and 3.0 agree within 1.5 points; 0.1 does not).
LINEAR_SETTINGS = ["mode=cached", "optimizer=sgd", "base_lr=1.0", "batch_size=256", "epochs=100"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="end-to-end demo on CPU: pretrain, evaluate, convert, fine-tune, table, plots",
        description="Run the toolkit end to end on the synthetic shapes data (generated, no download; "
                    "a few minutes on 2 CPU cores): pretrain SimSiam with the kNN monitor, evaluate "
                    "the checkpoint, its own initial weights (no pretraining) and a torchvision random init the "
                    f"same way (weighted kNN, cached linear probe x {LINEAR_TRIALS} seeds), convert the checkpoint to Detectron2, fine-tune a "
                    "detector for a few iterations if Detectron2 is installed, then print the comparison "
                    "table and write plots. Re-running reuses finished steps.")
    parser.add_argument("--output-dir", default="runs/demo", metavar="DIR",
                        help="where everything goes (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"pretraining epochs (default: the {PRETRAIN_PRESET} preset's)")
    parser.add_argument("--skip-detection", action="store_true",
                        help="skip the Detectron2 conversion and fine-tuning steps")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(func=run)


class Steps:
    """Prints each step's banner and keeps its wall time for the summary."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: list[tuple[str, float]] = []

    def run(self, title: str, action, *args, **kwargs):
        print(f"\n=== {title} ===", flush=True)
        began = time.perf_counter()
        result = action(*args, **kwargs)
        self.times.append((title, time.perf_counter() - began))
        return result

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def pretrain_step(out: Path, data: str, epochs: int | None, progress: bool):
    """Pretrain on the shapes data (resumes or skips when checkpoints are there); return (checkpoint, config)."""
    from pretrain.checkpointing import list_checkpoints
    from pretrain.defaults import PRETRAIN_DEFAULTS
    from pretrain.train import train
    from simsiam_eval.config import load_config

    overrides = [f"output_dir={out / 'pretrain'}", f"data.train={data}@train", f"knn.train={data}@train",
                 f"knn.val={data}@val", f"progress={progress}"]
    if epochs is not None:
        overrides.append(f"epochs={epochs}")
    cfg = load_config(PRETRAIN_PRESET, PRETRAIN_DEFAULTS, overrides)
    train(cfg)
    return list_checkpoints(out / "pretrain")[-1], cfg


def random_baseline(model_cfg) -> str:
    """The checkpoint spec of the pretrained architecture, randomly initialised (e.g. random:resnet18:cifar:16)."""
    return f"random:{model_cfg.arch}:{model_cfg.stem}:{model_cfg.width}"


def _evaluation_config(defaults: dict, out: Path, data: str, checkpoint: str, image_size: int,
                       progress: bool, extra: list[str]):
    from simsiam_eval.config import load_config

    overrides = [f"checkpoint={checkpoint}", f"train={data}@train", f"val={data}@val", f"image_size={image_size}",
                 f"cache_dir={out / 'cache'}", "workers=2", "device=cpu", f"progress={progress}", *extra]
    if "tensorboard" in defaults:
        overrides.append("tensorboard=false")
    return load_config(None, defaults, overrides)


def _publish_once(json_path: Path, db: Path, evaluate, trial: int | None = None) -> dict:
    """Evaluate unless ``json_path`` holds the record already (its printout goes to ``*-log.txt`` beside
    it); (re-)publish the record either way (idempotent)."""
    from simsiam_eval.results.store import publish_record, read_json_records

    if json_path.is_file():
        record = read_json_records([json_path])[0]
    else:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        with open(json_path.with_name(json_path.stem + "-log.txt"), "w") as log, contextlib.redirect_stdout(log):
            record = evaluate()  # its per-epoch lines go to the log, the demo prints the result
        record["trial"] = trial
    publish_record(record, json_path, db)
    return record


def evaluate_step(out: Path, data: str, checkpoint: str, name: str, folder_name: str, pre_cfg,
                  progress: bool) -> list[dict]:
    """Weighted kNN (the monitor's k and T) and the cached linear probe over several seeds, recorded
    under ``eval/<folder_name>`` with ``name`` as their table row (epochs come from the checkpoint)."""
    from simsiam_eval.distributed import cleanup, init_distributed
    from simsiam_eval.knn.defaults import KNN_DEFAULTS
    from simsiam_eval.knn.evaluate import run_knn
    from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
    from simsiam_eval.linear.evaluate import run_linear

    db = out / "results.db"
    folder = out / "eval" / folder_name
    size = pre_cfg.knn.image_size  # 0: native size, the monitor's rule
    info = init_distributed("cpu")
    labels = [f"name={name}", "tags=[demo]"]
    records = []
    try:
        knn_cfg = _evaluation_config(KNN_DEFAULTS, out, data, checkpoint, size, progress,
                                     [f"k=[{pre_cfg.knn.k}]", f"temperature={pre_cfg.knn.temperature}", *labels])
        records.append(_publish_once(folder / "knn.json", db, lambda: run_knn(knn_cfg, info)))
        for seed in range(LINEAR_TRIALS):
            run_dir = folder / f"linear-seed{seed}"
            lin_cfg = _evaluation_config(LINEAR_DEFAULTS, out, data, checkpoint, size, False,
                                         [*LINEAR_SETTINGS, f"seed={seed}", f"output_dir={run_dir}", *labels])
            records.append(_publish_once(run_dir / "linear.json", db, lambda: run_linear(lin_cfg, info),
                                         trial=seed))
    finally:
        cleanup()
    for rec in records:
        print(f"{name}: {rec['protocol']} top-1 {rec['metrics']['top1']:.1f}%"
              + (f" (seed {rec['trial']})" if rec.get("trial") is not None else ""))
    return records


def convert_step(out: Path, checkpoint: Path) -> tuple[Path | None, str]:
    """The checkpoint in Detectron2's format, verified, and what the verification rests on (the numerical check
    that ran: Detectron2's, or torchvision's when Detectron2 is absent); (None, reason) when it has no
    Detectron2 form or fails its verification."""
    from simsiam_eval.checkpoints.convert import convert_checkpoint
    from simsiam_eval.errors import UserError
    from transfer.verify import LIBRARY_CHECKS

    target = out / "detectron2" / "backbone.pkl"
    try:
        report = convert_checkpoint(checkpoint, target, "detectron2", library_checks=LIBRARY_CHECKS)
    except UserError as exc:
        print(f"not converted: {exc}")
        return None, str(exc)
    print(report.table())
    return target, f"{target} ({report.summary()})"


def table_step(out: Path):
    """Table 4 (and Table 5 when detection ran) of this demo's records, printed and written."""
    from simsiam_eval.report.build import comparison_tables
    from simsiam_eval.report.render import to_markdown, write_table
    from simsiam_eval.results.store import read_records

    written = []
    for layout, table in comparison_tables(read_records(out / "results.db"), reference="none").items():
        print(f"{table.title}\n\n{to_markdown(table)}")
        written += write_table(table, out / "tables" / layout)
    return written


def plots_step(out: Path) -> list[Path]:
    from simsiam_eval.report.plots import plot_run

    return [p for p in plot_run(out) if p.suffix == ".png"]


# The smoke config per architecture: R50-C4, or the small-ResNet C4 model (transfer/backbone.py).
DETECTION_CONFIGS = {"resnet50": "smoke/faster_rcnn_shapes_voc.yaml",
                     "resnet18": "smoke/faster_rcnn_shapes_voc_r18_cifar.yaml",
                     "resnet34": "smoke/faster_rcnn_shapes_voc_r18_cifar.yaml"}


def detection_task(arch: str, stem: str, width: int) -> tuple[str, list[str]] | None:
    """The smoke config that fits a checkpoint, with the overrides that set its depth, stem and width
    (ResNet-18/34); None when no smoke config fits."""
    if arch not in DETECTION_CONFIGS:
        return None
    if arch == "resnet50":
        return DETECTION_CONFIGS[arch], []
    return DETECTION_CONFIGS[arch], ["MODEL.RESNETS.DEPTH", arch.removeprefix("resnet"),
                                     "MODEL.RESNETS.STEM_TYPE", stem, "MODEL.RESNETS.STEM_OUT_CHANNELS", str(width),
                                     "MODEL.RESNETS.RES2_OUT_CHANNELS", str(width)]


def detection_step(out: Path, checkpoint: Path, name: str) -> str:
    """A few iterations of Faster R-CNN on the shapes VOC split (``simsiam-eval transfer`` with the smoke
    config that fits the checkpoint), recorded like any transfer trial; skipped with the reason when it
    cannot run here."""
    from simsiam_eval.checkpoints import read_checkpoint
    from simsiam_eval.errors import UserError
    from transfer.preflight import require_detectron2
    from simsiam_eval.config import load_config
    from transfer.defaults import TRANSFER_DEFAULTS
    from transfer.run import run_transfer

    try:
        require_detectron2()
    except UserError as exc:
        print(f"skipped: {exc}")
        return f"skipped: {exc}"
    ckpt = read_checkpoint(checkpoint)
    task = detection_task(ckpt.arch, ckpt.stem, ckpt.width)
    if task is None:
        reason = f"no smoke detection config for a {ckpt.arch} (configs for {', '.join(DETECTION_CONFIGS)})"
        print(f"skipped: {reason}")
        return f"skipped: {reason}"
    config, overrides = task
    print(f"config: {config} {' '.join(overrides)}".rstrip())
    options = load_config(None, TRANSFER_DEFAULTS)
    options.update(checkpoint=str(checkpoint), task=config, trials=1, opts=overrides, output_dir=str(out / "transfer"),
                   data_root=str(out / "data"), results=str(out / "results.db"), tags=["demo"], name=name, quiet=True)
    try:
        run_transfer(options)
    except UserError as exc:
        print(f"skipped: {exc}")
        return f"skipped: {exc}"
    return f"{out / 'transfer'} (1 trial, smoke schedule)"


def summary(out: Path, steps: Steps, written: list[Path], plots: list[Path], detection: str) -> str:
    """The closing screen: where everything is."""
    tables = ", ".join(str(p) for p in written if p.suffix == ".md")
    figures = ", ".join(str(p) for p in plots[:3]) + (" ..." if len(plots) > 3 else "")
    times = ", ".join(f"{title.split(':')[0]} {seconds:.0f}s" for title, seconds in steps.times)
    return "\n".join([
        f"{'=' * 20} simsiam-eval demo: done in {steps.total / 60:.1f} min {'=' * 20}",
        f"data           {out / 'data' / 'shapes'}  (ImageFolder train/val; voc/ and coco/ detection splits)",
        f"pretraining    {out / 'pretrain'}  (checkpoint_*.pth.tar, metrics.jsonl, tensorboard/)",
        f"evaluations    {out / 'eval'}/{{checkpoint_*,init,random-init}}  (knn.json, linear-seed*/linear.json)",
        f"results store  {out / 'results.db'}  ->  simsiam-eval table {out / 'results.db'}",
        f"detection      {detection}",
        f"tables         {tables}  (+ .tex .csv .html)",
        f"plots          {figures}  (+ .svg)",
        f"step times     {times}",
    ])


def run(args: argparse.Namespace) -> int:
    from pretrain.checkpointing import INIT_NAME
    from simsiam_eval.data.specs import prepare_dataset

    out = Path(args.output_dir)
    data = f"shapes:{out / 'data' / 'shapes'}"
    steps = Steps()
    steps.run("1/8 data: synthetic shapes (generated once, no download)", prepare_dataset, f"{data}@train")
    checkpoint, pre_cfg = steps.run(f"2/8 pretrain: SimSiam with the {PRETRAIN_PRESET} preset and its kNN monitor",
                                    pretrain_step, out, data, args.epochs, args.progress)
    name = checkpoint.name.split(".")[0]
    steps.run(f"3/8 evaluate: {name} (kNN + cached linear probe x {LINEAR_TRIALS} seeds)", evaluate_step, out,
              data, str(checkpoint), PRETRAINED_NAME, name, pre_cfg, args.progress)
    init = checkpoint.parent / INIT_NAME
    if init.is_file():
        steps.run(f"4/8 evaluate: {INIT_NAME}, the same network before pretraining, the same way", evaluate_step,
                  out, data, str(init), "SimSiam init (no pretraining)", "init", pre_cfg, args.progress)
    else:  # pretrained by an older version that did not keep the initial weights
        print(f"\n=== 4/8 skipped: {init} is missing (pretraining started elsewhere) ===")
    baseline = random_baseline(pre_cfg.model)
    steps.run(f"5/8 evaluate: {baseline} (torchvision's default init), the same way", evaluate_step, out, data,
              baseline, "random init (torchvision)", "random-init", pre_cfg, args.progress)
    if args.skip_detection:
        detection = "skipped (--skip-detection)"
    else:
        weights, converted = steps.run("6/8 convert: checkpoint -> Detectron2, read back and checked numerically",
                                       convert_step, out, checkpoint)
        if weights is None:
            detection = (f"skipped: {converted} (smoke detection configs: "
                         f"{', '.join(sorted(set(DETECTION_CONFIGS.values())))})")
        else:
            detection = f"weights {converted}; " + steps.run(
                "7/8 detection: short Faster R-CNN fine-tune on the shapes detection split",
                detection_step, out, checkpoint, PRETRAINED_NAME)
    written = steps.run("8/8 comparison table and plots", table_step, out)
    plots = plots_step(out)
    print("\n" + summary(out, steps, written, plots, detection))
    return 0
