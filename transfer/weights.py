"""Which tensors of a ResNet-C4 detector (R50-C4, or ``transfer.backbone``'s R18/R34) a converted
checkpoint fills, checked name by name.

In Detectron2's C4 models the stem and res2-res4 are ``backbone.*`` and res5 lives in the box head
(``roi_heads.res5.*``); a converted checkpoint names them ``stem.*``, ``res2.*`` ... ``res5.*``.
Everything else is a new head, initialised fresh: the RPN, the box predictor, the mask head and the
extra norm after res5. Detectron2 itself only warns about names it cannot match, so a wrong
conversion would silently train from scratch; this check stops the run instead.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from simsiam_eval.errors import UserError

NEW_HEADS = ("proposal_generator.", "roi_heads.box_predictor.", "roi_heads.mask_head.", "roi_heads.res5.norm.")
_COUNTER = "num_batches_tracked"  # BN step counters are neither in every checkpoint nor needed


def checkpoint_name(model_key: str) -> str | None:
    """The converted-checkpoint name of a detector tensor; None for a new head's tensor."""
    if model_key.startswith(NEW_HEADS) or model_key.endswith(_COUNTER):
        return None
    if model_key.startswith("backbone."):
        return model_key[len("backbone."):]
    if model_key.startswith("roi_heads.res5."):
        return model_key[len("roi_heads."):]
    return None


@dataclass
class WeightsMatch:
    matched: list[str] = field(default_factory=list)          # detector keys filled from the checkpoint
    missing: list[str] = field(default_factory=list)          # backbone keys the checkpoint lacks
    wrong_shape: list[str] = field(default_factory=list)      # "key: model (..) vs checkpoint (..)"
    unused: list[str] = field(default_factory=list)           # checkpoint tensors nothing takes
    fresh: list[str] = field(default_factory=list)            # new-head modules, initialised fresh

    @property
    def complete(self) -> bool:
        return not (self.missing or self.wrong_shape or self.unused)

    def summary(self) -> str:
        total = len(self.matched) + len(self.missing) + len(self.wrong_shape)
        return (f"{len(self.matched)}/{total} backbone tensors loaded from the checkpoint "
                f"(stem, res2-res5, BN statistics included); initialised fresh: {', '.join(self.fresh)}")


def match_weights(model_shapes: Mapping[str, Sequence[int]], checkpoint_shapes: Mapping[str, Sequence[int]]) -> WeightsMatch:
    """Compare a detector's tensors (name -> shape) with a converted checkpoint's (name -> shape)."""
    result = WeightsMatch()
    taken, fresh = set(), set()
    for key, shape in model_shapes.items():
        name = checkpoint_name(key)
        if name is None:
            fresh.update(head.rstrip(".") for head in NEW_HEADS if key.startswith(head))
            continue
        if name not in checkpoint_shapes:
            result.missing.append(name)
        elif tuple(checkpoint_shapes[name]) != tuple(shape):
            result.wrong_shape.append(f"{name}: model {tuple(shape)} vs checkpoint {tuple(checkpoint_shapes[name])}")
        else:
            result.matched.append(key)
        taken.add(name)
    result.unused = sorted(k for k in checkpoint_shapes if k not in taken and not k.endswith(_COUNTER))
    result.fresh = sorted(fresh)
    return result


def check_weights(match: WeightsMatch, weights_path: str) -> None:
    """A one-line UserError unless every backbone tensor is filled and every checkpoint tensor used."""
    if match.complete:
        return
    problems = []
    for label, items in (("missing", match.missing), ("wrong shape", match.wrong_shape), ("unused", match.unused)):
        if items:
            shown = ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")
            problems.append(f"{label}: {shown}")
    raise UserError(f"{weights_path}: does not fill the detector's backbone ({'; '.join(problems)}); "
                    f"is it a ResNet of the config's depth, stem and width converted to Detectron2 names?")
