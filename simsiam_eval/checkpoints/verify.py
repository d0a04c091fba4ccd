"""Verification after a conversion: counts of backbone tensors found / written / missing / dropped, a
bit-exact re-read of the output, and a numerical check: in the target library when it is importable, else a
torchvision forward pass of the weights read back, so that one always runs.

The timm check is here; checks in other libraries come from the caller (``library_checks``), e.g.
``transfer.verify.LIBRARY_CHECKS`` for Detectron2, so that this package imports neither."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from simsiam_eval.checkpoints.canonical import CanonicalCheckpoint, build_backbone
from simsiam_eval.checkpoints.read import read_checkpoint
from simsiam_eval.checkpoints.writers import TARGET_READERS, detectron2_metadata
from simsiam_eval.errors import UserError

TOLERANCE = 1e-5


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    detail: str


# (file read back, its path, probe input, reference outputs by stage) -> the check's result
NumericalCheck = Callable[[CanonicalCheckpoint, str | os.PathLike, torch.Tensor, dict[str, torch.Tensor]], Check]


@dataclass
class Verification:
    """What a conversion read, wrote and left out, and the checks run on the output."""

    source: CanonicalCheckpoint
    target: str
    written: int
    missing: list[str] = field(default_factory=list)   # source backbone tensors absent from the file read back
    checks: list[Check] = field(default_factory=list)
    numerical: Check | None = None                      # the forward check that ran (None: switched off)

    def table(self) -> str:
        src = self.source
        rows = [("backbone tensors found", str(len(src.found)), f"{src.arch} ({src.stem} stem) in {src.source_format} layout"),
                ("backbone tensors written", str(self.written), self.target),
                ("backbone tensors missing", str(len(self.missing)), "from the file read back")]
        if src.filled:
            rows.append(("BN counters filled in", str(len(src.filled)), "num_batches_tracked absent in the source, set to 0"))
        dropped = ", ".join(f"{group} ({n})" for group, n in src.dropped_groups.items())
        rows.append(("tensors dropped", str(len(src.dropped)), dropped))
        for check in self.checks:
            status = {True: "ok", False: "FAILED", None: "skipped"}[check.passed]
            rows.append((check.name, status, check.detail))
        width = max(len(r[0]) for r in rows)
        count = max(len(r[1]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value:>{count}}  {detail}".rstrip() for name, value, detail in rows)

    def summary(self) -> str:
        """In words, what the passed verification rests on: the numerical check that ran, or none."""
        if self.numerical is None:
            return "re-read bit for bit; no numerical check (switched off)"
        return f"verified: {self.numerical.name}, {self.numerical.detail}"


def verify_conversion(source: CanonicalCheckpoint, output: str | os.PathLike, target: str,
                      written: list[str], numerical: bool = True,
                      library_checks: Mapping[str, NumericalCheck] | None = None) -> Verification:
    """Check the written file against the source; a UserError if any backbone tensor is missing or differs.

    ``library_checks``: numerical checks by target beyond timm's (a target without one gets torchvision's).
    """
    if len(written) != len(source.state_dict):
        raise UserError(f"{output}: wrote {len(written)} backbone tensors, expected {len(source.state_dict)}")
    with single_thread():
        again = read_checkpoint(output, fmt=TARGET_READERS[target])
        report = Verification(source, target, len(written), missing=missing_tensors(source, again))
        if report.missing:
            raise UserError(f"{output}: {len(report.missing)} backbone tensors missing after conversion "
                            f"({', '.join(report.missing[:4])})")
        report.checks.append(reread_check(source, again))
        if target == "detectron2":
            report.checks.append(metadata_check(again))
        if numerical:
            x = probe_input()
            report.numerical = numerical_check(target, again, output, x, torchvision_stage_outputs(source, x),
                                               library_checks)
            report.checks.append(report.numerical)
    failed = [c for c in report.checks if c.passed is False]
    if failed:
        raise UserError(f"{output}: verification failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
    return report


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread for the checks (tiny forward passes, tensor comparisons): on a busy CPU, extra
    threads made them up to 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def missing_tensors(source: CanonicalCheckpoint, again: CanonicalCheckpoint) -> list[str]:
    """Source backbone tensors that the file read back lacks (BN counters the reader had to fill in count)."""
    filled = set(again.filled)
    return [k for k in source.state_dict if k not in again.state_dict or k in filled]


def reread_check(source: CanonicalCheckpoint, again: CanonicalCheckpoint) -> Check:
    """The file read back holds every source backbone tensor, bit for bit (dtype included)."""
    differ = [k for k, v in source.state_dict.items()
              if again.state_dict[k].dtype != v.dtype or not torch.equal(again.state_dict[k], v)]
    if differ:
        return Check("re-read output", False, f"{len(differ)} tensors differ ({', '.join(differ[:4])})")
    return Check("re-read output", True, f"{len(again.state_dict)} tensors bit-identical, arch {again.arch}")


def metadata_check(again: CanonicalCheckpoint) -> Check:
    """The arch, stem and width written beside a Detectron2 ``model`` are those of its tensors."""
    expected = detectron2_metadata(again)
    written = {key: again.metadata.get(key) for key in expected}
    if written != expected:
        return Check("Detectron2 metadata", False, f"file says {written}, its tensors {expected}")
    return Check("Detectron2 metadata", True, f"{again.arch}, {again.stem} stem, width {again.width}")


def probe_input(batch: int = 2) -> torch.Tensor:
    """A fixed random normalised image batch (32x32: res5 is 1x1 for the ImageNet stem, 4x4 for CIFAR's)."""
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def torchvision_stage_outputs(ckpt: CanonicalCheckpoint, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """res2..res5 (layer1..layer4) feature maps and pooled features of the torchvision backbone."""
    model = build_backbone(ckpt)
    outputs = {}
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for index in range(1, 5):
            h = getattr(model, f"layer{index}")(h)
            outputs[f"res{index + 1}"] = h
        outputs["pooled"] = torch.flatten(model.avgpool(h), 1)
    return outputs


def compare_outputs(name: str, got: torch.Tensor, want: torch.Tensor) -> Check:
    """Passed when shapes agree and the largest absolute difference is within TOLERANCE."""
    if got.shape != want.shape:
        return Check(name, False, f"shape {tuple(got.shape)} != {tuple(want.shape)}")
    diff = (got - want).abs().max().item()
    return Check(name, diff <= TOLERANCE, f"max |diff| {diff:.1e} (tolerance {TOLERANCE:g})")


def torchvision_check(again: CanonicalCheckpoint, output, x, reference) -> Check:
    """The output loaded into a torchvision ResNet gives the source's pooled features."""
    with torch.no_grad():
        got = build_backbone(again)(x)
    return compare_outputs("torchvision pooled features", got, reference["pooled"])


def timm_check(again: CanonicalCheckpoint, output, x, reference) -> Check:
    """The output loaded (strict) into ``timm.create_model(arch, num_classes=0)`` gives the same pooled features."""
    try:
        import timm
    except ImportError:
        return Check("timm pooled features", None, "timm not installed")
    with torch.device("meta"):
        model = timm.create_model(again.arch, pretrained=False, num_classes=0)
    model.load_state_dict(again.state_dict, strict=True, assign=True)
    with torch.no_grad():
        got = model.eval()(x)
    return compare_outputs("timm pooled features", got, reference["pooled"])


NUMERICAL_CHECKS: dict[str, NumericalCheck] = {"timm": timm_check}


def numerical_check(target: str, again: CanonicalCheckpoint, output, x, reference,
                    library_checks: Mapping[str, NumericalCheck] | None = None) -> Check:
    """The target library's forward check; when that library is not importable, the torchvision one on the
    same tensors, named so (e.g. "torchvision pooled features (detectron2 not installed)")."""
    checks = {**NUMERICAL_CHECKS, **(library_checks or {})}
    check = checks.get(target, torchvision_check)(again, output, x, reference)
    if check.passed is None:
        fallback = torchvision_check(again, output, x, reference)
        return Check(f"{fallback.name} ({check.detail})", fallback.passed, fallback.detail)
    return check
