"""``simsiam-eval transfer``: convert a checkpoint, check everything, run N trials, record the results.

Steps: detectron2 importable -> config (recipe, ``KEY VALUE`` overrides, batch/schedule for the
devices) -> data sets present, classes consistent -> weights converted (``simsiam_eval.checkpoints``)
and every backbone tensor matched -> trials (``transfer.trials``; each trial a ``python -m
transfer.trainer`` process, which ``launch`` fans out over the devices) -> one record per trial and
one for the mean +- sample std.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from simsiam_eval.config import Config, require_keys
from simsiam_eval.errors import UserError
from simsiam_eval.precision import AMP_FP16, FP32
from simsiam_eval.results.records import build_record
from simsiam_eval.results.store import append_record, publish_record, resolve_db_path
from simsiam_eval.run_lock import hold_output_dir
from transfer.configs import task_config, task_data_name
from transfer.datasets import dataset_root
from transfer.preflight import check_classes, check_datasets, require_detectron2
from transfer.scaling import Schedule, ims_per_device_for_memory, scale_schedule
from transfer.trials import (
    Trial,
    aggregate,
    aggregate_metrics,
    format_summary,
    plan_trials,
    run_trials,
)
from transfer.verify import LIBRARY_CHECKS
from transfer.weights import check_weights

RUN_CONFIG = "run_config.yaml"



def default_output_dir(task: str, ckpt) -> Path:
    """``runs/transfer/<data>/<checkpoint file stem>-<sha256 prefix>``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(ckpt.path)).name.split(".")[0]).strip("-") or "checkpoint"
    return Path("runs") / "transfer" / task_data_name(task) / f"{stem}-{(ckpt.sha256 or '')[:8]}".rstrip("-")


def device_count(requested: int) -> int:
    """``num_gpus``, or (0) every visible GPU, else 1."""
    import torch

    if requested < 0:
        raise UserError(f"num_gpus must be 0 (every visible GPU) or more, got {requested}")
    return requested or max(1, torch.cuda.device_count())


def memory_cap(requested: int, device: str) -> tuple[int | None, str]:
    """Images per device that fit: ``ims_per_device``, (0) an estimate from CUDA memory, or no limit on the CPU."""
    if requested < 0:
        raise UserError(f"ims_per_device must be 0 (estimate) or more, got {requested}")
    if requested:
        return requested, f"ims_per_device {requested}"
    if device.startswith("cuda"):
        import torch

        gigabytes = torch.cuda.get_device_properties(0).total_memory / 1e9
        cap = ims_per_device_for_memory(gigabytes)
        return cap, f"estimated from {gigabytes:.0f} GB on cuda:0"
    return None, "CPU memory assumed sufficient"


def detectron2_version() -> str:
    import detectron2

    return detectron2.__version__


def recipe_schedule(cfg) -> Schedule:
    solver = cfg.SOLVER
    return Schedule(solver.IMS_PER_BATCH, float(solver.BASE_LR), solver.MAX_ITER, tuple(solver.STEPS),
                    solver.WARMUP_ITERS, solver.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD)


def convert_weights(options: Config, ckpt, output_dir: Path) -> Path:
    """The checkpoint's Detectron2 weights file in ``output_dir/weights``, converted and verified once."""
    from simsiam_eval.checkpoints.convert import convert_checkpoint

    weights = output_dir / "weights" / f"{ckpt.arch}-{(ckpt.sha256 or 'unhashed')[:12]}.pkl"
    if weights.is_file():
        print(f"weights: {weights} (converted earlier)")
    else:
        report = convert_checkpoint(options.checkpoint, weights, "detectron2", options.format,
                                    library_checks=LIBRARY_CHECKS)
        print(f"weights: {options.checkpoint} ({report.source.source_format}, {report.source.arch}) -> {weights}")
        print(report.table())
    return weights


def check_model_weights(cfg, weights: Path) -> str:
    """Build the detector on the CPU and match the weights against it (UserError unless complete)."""
    from detectron2.modeling import build_model

    from transfer.trainer import check_detector_weights

    cpu = cfg.clone()
    cpu.MODEL.DEVICE = "cpu"
    match = check_detector_weights(build_model(cpu), str(weights))
    check_weights(match, str(weights))
    return match.summary()


def write_run_config(cfg, output_dir: Path) -> Path:
    """The resolved config all trials start from; a different one already there is an error (its
    finished trials would be averaged with runs of another recipe)."""
    path = output_dir / RUN_CONFIG
    text = cfg.dump()
    if path.is_file() and path.read_text() != text:
        raise UserError(f"{output_dir} holds trials of a different config or checkpoint ({path} differs); "
                        f"use another --output-dir, or delete the folder to start over")
    if not path.is_file():
        from simsiam_eval.atomic import atomic_write_text

        atomic_write_text(text, path)
    return path


def trial_command(run_config: Path, trial: Trial, devices: int, dist_url: str) -> list[str]:
    return [sys.executable, "-m", "transfer.trainer", "--config-file", str(run_config), "--num-gpus", str(devices),
            "--dist-url", dist_url, "--resume", "OUTPUT_DIR", str(trial.folder), "SEED", str(trial.seed)]


def check_overrides(opts: list[str]) -> None:
    if any(key.startswith("-") for key in opts[::2]):
        raise UserError(f"options go before the KEY VALUE overrides: {' '.join(opts)}")
    if len(opts) % 2:
        raise UserError(f"overrides come in KEY VALUE pairs; got an odd number: {' '.join(opts)}")


def resolve_config(options: Config, config_file: Path):
    """The recipe with the overrides, its batch and schedule scaled for the devices; the scaling note."""
    from transfer.trainer import build_config

    try:
        cfg = build_config(str(config_file), options.opts)
    except (KeyError, ValueError) as exc:  # yacs: unknown key, wrong type (build_config checks override keys)
        raise UserError(f"config {config_file} with overrides {' '.join(options.opts) or '(none)'}: "
                        f"{str(exc).strip(chr(39))}") from None
    devices = device_count(options.num_gpus)
    cap, cap_reason = memory_cap(options.ims_per_device, cfg.MODEL.DEVICE)
    schedule, scaling = scale_schedule(recipe_schedule(cfg), devices, cap)
    cfg.merge_from_list(schedule.opts())
    return cfg, devices, f"{scaling} [{cap_reason}]"


def check_data(cfg) -> None:
    """Data sets present, registered, and with the classes the config expects."""
    from transfer.register import class_names, register_datasets

    check_datasets([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    register_datasets(cfg)
    check_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, {n: class_names(n) for n in cfg.DATASETS.TRAIN},
                  {n: class_names(n) for n in cfg.DATASETS.TEST})


def check_backbone_fits(cfg, ckpt, where: str) -> None:
    """The config builds the checkpoint's depth, stem and width (the recipes are R50-C4; the smoke
    config ``faster_rcnn_shapes_voc_r18_cifar.yaml`` is a CIFAR-stem ResNet-18)."""
    resnets = cfg.MODEL.RESNETS
    if ckpt.arch != f"resnet{resnets.DEPTH}" and ckpt.arch.removeprefix("resnet").isdigit():
        raise UserError(f"{where}: holds a {ckpt.arch}, but the config builds a ResNet-{resnets.DEPTH} "
                        f"(MODEL.RESNETS.DEPTH); the recipes are R50-C4")
    if (ckpt.stem, ckpt.width) != (resnets.STEM_TYPE, resnets.STEM_OUT_CHANNELS):
        raise UserError(f"{where}: has the {ckpt.stem} stem of width {ckpt.width}, but the config builds the "
                        f"{resnets.STEM_TYPE} stem of width {resnets.STEM_OUT_CHANNELS} "
                        f"(MODEL.RESNETS.STEM_TYPE, STEM_OUT_CHANNELS)")


def model_name(cfg) -> str:
    """``Faster R-CNN R50-C4``, ``Mask R-CNN R50-C4``, ``Faster R-CNN R18-C4 (cifar stem, width 16)``."""
    resnets = cfg.MODEL.RESNETS
    name = f"{'Mask' if cfg.MODEL.MASK_ON else 'Faster'} R-CNN R{resnets.DEPTH}-C4"
    if (resnets.STEM_TYPE, resnets.STEM_OUT_CHANNELS) != ("imagenet", 64):
        name += f" ({resnets.STEM_TYPE} stem, width {resnets.STEM_OUT_CHANNELS})"
    return name


def read_fitting_checkpoint(options: Config, cfg):
    """The checkpoint, matched against the detector, and the run folder it goes to."""
    from simsiam_eval.checkpoints import read_checkpoint

    ckpt = read_checkpoint(options.checkpoint, options.format)
    check_backbone_fits(cfg, ckpt, options.checkpoint)
    return ckpt, Path(options.output_dir) if options.output_dir else default_output_dir(options.task, ckpt)


def prepare_weights(options: Config, cfg, ckpt, output_dir: Path) -> None:
    """The checkpoint converted into the run folder and checked against the detector; sets MODEL.WEIGHTS."""
    weights = convert_weights(options, ckpt, output_dir)
    cfg.MODEL.WEIGHTS = str(weights.resolve())
    print(f"weights check: {check_model_weights(cfg, weights)}")


def run_settings(options: Config, config_file: Path, cfg, devices: int, scaling: str,
                 output_dir: Path) -> dict:
    """The ``settings`` of the records: what was run, on what, with which batch and schedule."""
    solver = cfg.SOLVER
    return {"task": options.task, "config": str(config_file), "overrides": list(options.opts),
            "model": model_name(cfg),
            "devices": devices, "device": cfg.MODEL.DEVICE, "ims_per_batch": solver.IMS_PER_BATCH,
            "base_lr": solver.BASE_LR, "max_iter": solver.MAX_ITER, "steps": list(solver.STEPS),
            "precision": AMP_FP16 if solver.AMP.ENABLED and cfg.MODEL.DEVICE.startswith("cuda") else FP32,
            "scaling": scaling, "output_dir": str(output_dir), "detectron2": detectron2_version(),
            "data_root": str(dataset_root())}


def train_in_subprocess(trial: Trial, run_config: Path, devices: int, options: Config) -> float:
    """One trial as a ``python -m transfer.trainer`` process (resuming from the trial's folder); seconds."""
    trial.folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    command = trial_command(run_config, trial, devices, options.dist_url)
    if options.quiet:
        with open(trial.folder / "stdout.txt", "ab") as out:
            code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    else:
        code = subprocess.call(command)
    if code != 0:
        raise UserError(f"trial {trial.index} failed (exit code {code}); see {trial.folder / 'log.txt'}")
    return time.time() - t0


def check_transfer_config(options: Config) -> None:
    """The keys every run needs, and Detectron2's overrides in pairs."""
    require_keys(options, ("checkpoint", "task"))
    if options.trials < 1:
        raise UserError(f"trials must be at least 1, got {options.trials}")
    check_overrides([str(item) for item in options.opts])


def run_transfer(options: Config) -> dict:
    """Everything ``simsiam-eval transfer`` does (``options``: the keys of ``transfer.defaults``);
    returns the aggregate record."""
    check_transfer_config(options)
    options = Config({**options, "opts": [str(item) for item in options.opts]})
    config_file = task_config(options.task)
    if options.data_root:
        os.environ["DETECTRON2_DATASETS"] = str(Path(options.data_root).expanduser().resolve())
    require_detectron2()
    started = time.time()
    cfg, devices, scaling = resolve_config(options, config_file)
    print(f"task {options.task}: {config_file}\nschedule: {scaling}")
    check_data(cfg)
    ckpt, output_dir = read_fitting_checkpoint(options, cfg)
    with hold_output_dir(output_dir):
        return _run_in_folder(options, cfg, ckpt, output_dir, config_file, devices, scaling, started)


def _run_in_folder(options: Config, cfg, ckpt, output_dir: Path, config_file: Path, devices: int, scaling: str,
                   started: float) -> dict:
    """The trials and their records, in the run folder this process holds."""
    prepare_weights(options, cfg, ckpt, output_dir)
    run_config = write_run_config(cfg, output_dir)

    data = {"name": task_data_name(options.task), "train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)}
    settings = run_settings(options, config_file, cfg, devices, scaling, output_dir)
    db_path = resolve_db_path(options.results or None, output_dir)
    timings: dict[int, tuple[float, float]] = {}

    def train(trial: Trial) -> None:
        t0 = time.time()
        timings[trial.index] = (t0, train_in_subprocess(trial, run_config, devices, options))

    def publish(trial: Trial, metrics: dict) -> None:
        t0, seconds = timings.get(trial.index, (trial.results_file.stat().st_mtime, 0.0))
        record = build_record("transfer", metrics, ckpt.record(), data, settings, t0, seconds,
                              seed=trial.seed, trial=trial.index, tags=options.tags, name=options.name or None)
        publish_record(record, trial.record_file, db_path)

    trials = plan_trials(output_dir, options.trials, options.seed)
    summary = aggregate(run_trials(trials, train, publish))
    print(f"\n{settings['model']} on {data['name']}, {len(trials)} trial(s), mean ± sample std:")
    print(format_summary(summary))
    stored = [json.loads(t.record_file.read_text()) for t in trials]
    if db_path is not None:
        for trial_record in stored:  # a run killed between a record's file and its row: the row now (once: same id)
            append_record(trial_record, db_path)
    ids = [trial_record["id"] for trial_record in stored]
    record = build_record("transfer-aggregate", aggregate_metrics(summary), ckpt.record(), data,
                          {**settings, "trials": len(trials), "seeds": [t.seed for t in trials], "trial_records": ids},
                          started, time.time() - started, tags=options.tags, name=options.name or None)
    record["id"] = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:32]  # the same trials: stored once
    publish_record(record, output_dir / "aggregate.json", db_path)
    print(f"records: {output_dir}/trial*/record.json, {output_dir / 'aggregate.json'}; database {db_path}")
    return record
