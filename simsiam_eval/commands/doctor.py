"""``simsiam-eval doctor [COMMAND]``: what is installed, which devices and paths are in use, and which
commands can run here (with the install command for those that cannot)."""
from __future__ import annotations

import argparse
import importlib
import platform
from dataclasses import dataclass
from typing import Callable

from simsiam_eval import __version__
from transfer.preflight import INSTALL_DETECTRON2

INSTALL = {
    "faiss": "pip install faiss-cpu  (or, for GPUs, faiss-gpu-cu12: the extras simsiam-eval[cpu] / [gpu])",
    "detectron2": INSTALL_DETECTRON2,
    "timm": "pip install timm  (the extra simsiam-eval[timm])",
}


@dataclass(frozen=True)
class Probe:
    """What an import found: the version (None when the library cannot be used) and a note."""

    version: str | None
    note: str = ""

    def describe(self) -> str:
        if self.version is None:
            return self.note
        return f"{self.version} ({self.note})" if self.note else self.version


def _import(module: str) -> Probe:
    try:
        imported = importlib.import_module(module)
    except (ImportError, OSError) as exc:
        return Probe(None, "not installed" if isinstance(exc, ModuleNotFoundError) else _first_line(exc))
    return Probe(str(getattr(imported, "__version__", "unknown version")))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def probe_torch() -> Probe:
    return _import("torch")


def probe_torchvision() -> Probe:
    return _import("torchvision")


def probe_faiss() -> Probe:
    """The FAISS build that ``import faiss`` loads: the GPU build has ``StandardGpuResources``."""
    found = _import("faiss")
    if found.version is None:
        return found
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return Probe(found.version, "CPU build")
    return Probe(found.version, f"GPU build, {faiss.get_num_gpus()} GPU(s) visible")


def probe_detectron2() -> Probe:
    """Detectron2 counts as usable only when its C++ extension loads (transfer needs it)."""
    found = _import("detectron2")
    if found.version is None:
        return found
    extension = _import("detectron2._C")
    if extension.version is None:
        return Probe(None, f"{found.version} installed, but its C++ extension does not load: {extension.note}")
    return Probe(found.version, "C++ extension loads")


def probe_timm() -> Probe:
    return _import("timm")


def probe_sklearn() -> Probe:
    return _import("sklearn")


def probe_submitit() -> Probe:
    return _import("submitit")


PROBES: dict[str, Callable[[], Probe]] = {
    "torch": probe_torch, "torchvision": probe_torchvision, "faiss": probe_faiss,
    "detectron2": probe_detectron2, "timm": probe_timm, "scikit-learn": probe_sklearn,
    "submitit": probe_submitit,
}
CORE = ("torch", "torchvision")


@dataclass(frozen=True)
class Need:
    """A library a command uses beyond the core; ``without`` says what changes when it is absent
    (empty: the command cannot run)."""

    library: str
    without: str = ""


NEEDS: dict[str, tuple[Need, ...]] = {
    "pretrain": (),
    "knn": (Need("faiss", "exact torch search"),),
    "linear": (),
    "transfer": (Need("detectron2"),),
    "convert": (Need("detectron2", "no check in Detectron2's ResNet"), Need("timm", "no check in timm's ResNet")),
    "table": (),
    "plot": (),
    "demo": (Need("detectron2", "no detection fine-tune"),),
    "suite": (Need("faiss", "exact torch search"), Need("detectron2", "no transfer evaluations"),
              Need("submitit", "no --launcher slurm")),
}


def command_status(command: str, found: dict[str, Probe]) -> tuple[bool, str]:
    """(can run, one line saying why not or what is missing) for ``command`` given the probes."""
    broken = [name for name in CORE if found[name].version is None]
    if broken:
        return False, f"cannot run: {', '.join(broken)} does not import; reinstall torch and torchvision"
    missing = [need for need in NEEDS[command] if found[need.library].version is None]
    blocking = [need.library for need in missing if not need.without]
    if blocking:
        return False, f"cannot run: needs {', '.join(blocking)}"
    return True, "ok" + "".join(f"; without {need.library}: {need.without}" for need in missing)


def devices() -> dict[str, str]:
    """CUDA availability, then one row per GPU with its name and memory."""
    import torch

    if not torch.cuda.is_available():
        return {"CUDA": "not available: CPU only"}
    rows = {"CUDA": f"{torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"}
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        rows[f"cuda:{index}"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
    return rows


def paths() -> dict[str, str]:
    """Where data, cached features, results and presets are read and written by default."""
    from simsiam_eval.config import packaged_config_dir
    from simsiam_eval.features import default_cache_dir
    from simsiam_eval.knn.defaults import KNN_DEFAULTS
    from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
    from simsiam_eval.results.store import resolve_db_path
    from transfer.datasets import dataset_root

    results = ", ".join(f"{command}: {resolve_db_path(None, defaults['output_dir'])}"
                        for command, defaults in (("knn", KNN_DEFAULTS), ("linear", LINEAR_DEFAULTS)))
    return {"data root (transfer)": f"{dataset_root()} ($DETECTRON2_DATASETS, default ./datasets)",
            "feature cache": f"{default_cache_dir()} ($SIMSIAM_EVAL_CACHE)",
            "results": f"results.db in each run's output folder ({results}) or --results DB",
            "presets": str(packaged_config_dir())}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="versions, devices, paths, and which commands can run here",
        description="One screen: versions of Python and the libraries the toolkit uses (FAISS: CPU or GPU "
                    "build; Detectron2: whether its C++ extension loads), CUDA devices, default data, "
                    "feature-cache and results paths, and for each command whether it can run here, with "
                    "the install command where it cannot. With COMMAND, the exit status is non-zero when "
                    "that command cannot run; without, only when torch itself is broken.")
    parser.add_argument("target", nargs="?", choices=list(NEEDS), metavar="COMMAND",
                        help=f"exit non-zero unless this command can run ({', '.join(NEEDS)})")
    parser.set_defaults(func=run)


def _section(title: str, rows: dict[str, str]) -> None:
    print(f"\n{title}")
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"  {key:<{width}}  {value}")


def run(args: argparse.Namespace) -> int:
    found = {name: probe() for name, probe in PROBES.items()}
    core_works = all(found[name].version is not None for name in CORE)
    print(f"simsiam-eval {__version__}")
    _section("versions", {"python": platform.python_version(), **{n: p.describe() for n, p in found.items()}})
    if core_works:
        _section("devices", devices())
        _section("paths", paths())
    status = {command: command_status(command, found) for command in NEEDS}
    _section("commands", {command: line for command, (_, line) in status.items()})
    missing = {need.library for needs in NEEDS.values() for need in needs if found[need.library].version is None}
    if missing:
        _section("to install", {library: INSTALL[library] for library in INSTALL if library in missing})
    if args.target is not None:
        return 0 if status[args.target][0] else 1
    return 0 if core_works else 1
