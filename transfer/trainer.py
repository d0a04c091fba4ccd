"""The detection-transfer trainer: Detectron2's DefaultTrainer with our head, data sets and
evaluators, started by Detectron2's ``launch``. Detectron2's usual command line::

    python -m transfer.trainer --config-file CONFIG.yaml [--num-gpus N] [--resume] [--eval-only] [KEY VALUE ...]

(``tools/train_net.py`` is the same). ``--num-gpus N`` starts N processes: NCCL on GPUs, gloo on CPU.
After the final evaluation (or ``--eval-only``) the main process writes ``OUTPUT_DIR/final_results.json`` (Detectron2 itself
writes per-iteration training metrics to metrics.json).
"""
from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import (
    DefaultTrainer,
    HookBase,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm

import transfer.roi_heads  # noqa: F401  (registers the Res5ROIHeads variants; transfer.backbone its backbone)
from simsiam_eval.atomic import atomic_torch_save, atomic_write_json, atomic_write_text
from simsiam_eval.errors import UserError, one_line
from simsiam_eval.fault_points import fault_point
from transfer.backbone import add_stem_config
from transfer.evaluators import build_evaluator
from transfer.register import register_datasets
from transfer.trials import RESULTS_FILE
from transfer.weights import check_weights, match_weights

logger = logging.getLogger("detectron2.transfer")


@contextmanager
def ddp_for_cpu_modules() -> Iterator[None]:
    """Within this block DefaultTrainer's ``create_ddp_model`` builds DDP with ``device_ids=None`` for
    a module on the CPU (Detectron2 passes ``device_ids=[local rank]``, which DDP rejects for CPU
    modules, so several gloo processes would fail); GPU modules are wrapped as before."""
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, its files written atomically (a temporary file renamed into place): a
    trial killed while saving resumes from its previous checkpoint, never from a torn file or tag."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **{k: v.state_dict() for k, v in self.checkpointables.items()},
                **kwargs}
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))


class FaultPointHook(HookBase):
    """Passes the ``trial-step`` fault point (simsiam_eval/fault_points.py) after each step and its checkpoint."""

    def after_step(self):
        fault_point("trial-step")


class Trainer(DefaultTrainer):
    """DefaultTrainer (its loop, hooks and resume unchanged) with CPU-capable DDP, atomic checkpoints and
    the evaluator chosen by each test set's metadata."""

    def __init__(self, cfg):
        with ddp_for_cpu_modules():
            super().__init__(cfg)

    def build_hooks(self):
        # called at the end of DefaultTrainer.__init__, before the hooks capture the checkpointer
        self.checkpointer = AtomicCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                               trainer=weakref.proxy(self))
        return [*super().build_hooks(), FaultPointHook()]

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


def build_config(config_file: str, opts: list[str]):
    """Detectron2's defaults with our keys (``MODEL.RESNETS.STEM_TYPE``), then the YAML file (with its
    ``_BASE_`` chain), then ``KEY VALUE`` pairs; the CPU when the config asks for CUDA on a machine without it."""
    cfg = get_cfg()
    add_stem_config(cfg)
    cfg.merge_from_file(config_file)
    check_override_keys(cfg, opts)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def check_override_keys(cfg, opts: list[str]) -> None:
    """A KeyError for the first override key the config lacks (yacs' merge_from_list would assert, and an
    AssertionError is no way to tell a user's typo from a bug); deprecated and renamed keys are yacs' own."""
    for full_key in opts[::2]:
        if cfg.key_is_deprecated(full_key) or cfg.key_is_renamed(full_key):
            continue
        node = cfg
        for subkey in full_key.split("."):
            if not isinstance(node, dict) or subkey not in node:
                raise KeyError(f"Non-existent key: {full_key}")
            node = node[subkey]


def weight_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Detectron2 weights file (``.pkl`` of numpy arrays or ``.pth``)."""
    from simsiam_eval.checkpoints.files import load_file

    obj = load_file(path)
    model = obj.get("model", obj) if isinstance(obj, dict) else obj
    return {k: tuple(v.shape) for k, v in model.items() if hasattr(v, "shape")}


def check_detector_weights(model, weights: str):
    """How the tensors of ``weights`` fill ``model`` (``transfer.weights.WeightsMatch``)."""
    model = getattr(model, "module", model)
    return match_weights({k: tuple(v.shape) for k, v in model.state_dict().items()}, weight_shapes(weights))


def log_weights_loaded(model, weights: str) -> None:
    """Say which backbone tensors came from ``weights``; a warning when any is missing or unused
    (``simsiam-eval transfer`` stops before training in that case; here Detectron2's rules apply)."""
    try:
        match = check_detector_weights(model, weights)
        check_weights(match, weights)
        logger.info(f"weights {weights}: {match.summary()}")
    except UserError as exc:
        logger.warning(f"weights {weights}: {one_line(exc)}")


def setup(args):
    cfg = build_config(args.config_file, args.opts)
    cfg.freeze()
    register_datasets(cfg)
    default_setup(cfg, args)
    return cfg


def train(cfg, resume: bool):
    """Fine-tune (resuming from OUTPUT_DIR's last checkpoint if asked and present); the final evaluation."""
    trainer = Trainer(cfg)
    resuming = resume and trainer.checkpointer.has_checkpoint()
    trainer.resume_or_load(resume=resume)
    if resuming:
        logger.info(f"resumed from {trainer.checkpointer.get_checkpoint_file()} at iteration {trainer.start_iter}")
    elif cfg.MODEL.WEIGHTS:
        log_weights_loaded(trainer.model, cfg.MODEL.WEIGHTS)
    trainer.train()
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if comm.is_main_process() and not os.path.isfile(final):  # resumed after the last step, before model_final
        trainer.checkpointer.save("model_final", iteration=cfg.SOLVER.MAX_ITER - 1)
    return getattr(trainer, "_last_eval_results", None)  # set by DefaultTrainer's final evaluation


def evaluate(cfg, resume: bool):
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    return Trainer.test(cfg, model)


def main(args):
    cfg = setup(args)
    results = evaluate(cfg, args.resume) if args.eval_only else train(cfg, args.resume)
    if comm.is_main_process() and results:
        atomic_write_json({"results": results, "iterations": cfg.SOLVER.MAX_ITER, "seed": cfg.SEED},
                          os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE))
    return results


def cli(argv: list[str] | None = None) -> int:
    """Detectron2's train_net command line (``--config-file``, ``--num-gpus``, ``--resume``, ...)."""
    args = default_argument_parser().parse_args(argv)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except UserError as exc:
        print(f"train_net: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
