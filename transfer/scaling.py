"""Batch size and schedule for the devices at hand (the recipes assume 8 GPUs x 2 images = 16).

Rule (MoCo's advice, moco issue 11; Goyal et al.'s linear scaling): keep IMS_PER_BATCH when it
divides evenly over the devices and each device's share fits; otherwise use the largest batch that
does (a multiple of the device count) and scale the learning rate by new/old batch and every
iteration count (MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD, EVAL_PERIOD) by old/new, so the
run sees the same number of images per learning-rate phase.
"""
from __future__ import annotations

from dataclasses import dataclass

# Detectron2's model zoo: R50-C4 trains at 4.8 (Faster) - 5.2 (Mask) GB per GPU with 2 images of
# ~800 px; 2.6 GB per image is the estimate used when --ims-per-device is not given on CUDA.
GB_PER_IMAGE_R50_C4 = 2.6


@dataclass(frozen=True)
class Schedule:
    ims_per_batch: int
    base_lr: float
    max_iter: int
    steps: tuple[int, ...]
    warmup_iters: int
    checkpoint_period: int
    eval_period: int

    def opts(self) -> list[str]:
        """Detectron2 ``KEY VALUE`` overrides that set this schedule."""
        return ["SOLVER.IMS_PER_BATCH", str(self.ims_per_batch), "SOLVER.BASE_LR", repr(self.base_lr),
                "SOLVER.MAX_ITER", str(self.max_iter), "SOLVER.STEPS", repr(tuple(self.steps)),
                "SOLVER.WARMUP_ITERS", str(self.warmup_iters),
                "SOLVER.CHECKPOINT_PERIOD", str(self.checkpoint_period), "TEST.EVAL_PERIOD", str(self.eval_period)]


def ims_per_device_for_memory(gigabytes: float) -> int:
    """Images of ~800 px that an R50-C4 fits in this much device memory (at least 1)."""
    return max(1, int(gigabytes // GB_PER_IMAGE_R50_C4))


def scale_schedule(recipe: Schedule, devices: int, max_ims_per_device: int | None = None) -> tuple[Schedule, str]:
    """The schedule to run on ``devices`` processes, and a sentence saying what was done."""
    if devices < 1:
        raise ValueError("devices must be >= 1")
    batch = recipe.ims_per_batch
    per_device = batch // devices
    fits = max_ims_per_device is None or per_device <= max_ims_per_device
    where = f"{devices} device{'s' if devices > 1 else ''}"
    if batch % devices == 0 and per_device >= 1 and fits:
        return recipe, f"batch {batch} kept: {per_device} image(s) per device on {where}"
    per_device = max(1, min(per_device, max_ims_per_device or per_device))
    new_batch = per_device * devices
    factor = new_batch / batch

    def iters(n: int) -> int:
        return max(1, round(n / factor)) if n > 0 else n

    scaled = Schedule(new_batch, recipe.base_lr * factor, iters(recipe.max_iter),
                      tuple(iters(s) for s in recipe.steps), iters(recipe.warmup_iters) if recipe.warmup_iters else 0,
                      iters(recipe.checkpoint_period), iters(recipe.eval_period))
    limit = f" (at most {max_ims_per_device} per device)" if max_ims_per_device is not None else ""
    return scaled, (f"batch {batch} does not fit {where}{limit}: linear scaling x{factor:g} -> batch {new_batch} "
                    f"({per_device} per device), lr {scaled.base_lr:g}, {scaled.max_iter} iterations, "
                    f"steps {list(scaled.steps)}, warm-up {scaled.warmup_iters}")
