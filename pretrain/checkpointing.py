"""Checkpoints in the official layout, RNG state, resume.

File names follow main_simsiam.py exactly: ``checkpoint_{e:04d}.pth.tar`` with ``e`` the 0-based index
of the epoch just finished, holding ``'epoch': e + 1`` (a 100-epoch run ends with
``checkpoint_0099.pth.tar``, whose ``epoch`` is 100).
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simsiam_eval.atomic import atomic_torch_save
from simsiam_eval.checkpoints.files import load_file
from simsiam_eval.errors import UserError

NAME = re.compile(r"^checkpoint_(\d{4,})\.pth\.tar$")
# The weights before the first step (epoch 0), in the same layout: the controlled "no pretraining"
# baseline (same architecture, initialisation and seed). Not a resume point.
INIT_NAME = "init.pth.tar"


def checkpoint_path(output_dir: Path, epoch_index: int) -> Path:
    """The file main_simsiam.py writes after the epoch of 0-based index ``epoch_index``."""
    return output_dir / f"checkpoint_{epoch_index:04d}.pth.tar"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints in ``output_dir``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states, in types torch.load(weights_only) accepts."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"], "has_gauss": np_state["has_gauss"],
                         "gauss": np_state["gauss"],
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]}})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(output_dir: Path, state: dict[str, Any], keep_last: int = 0) -> Path:
    """Write ``state`` (whose ``epoch`` counts the finished epochs) atomically under the official name,
    then delete all but the newest ``keep_last`` checkpoints (0 keeps all)."""
    path = checkpoint_path(output_dir, int(state["epoch"]) - 1)
    atomic_torch_save(state, path)
    if keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    """Load one of our checkpoints safely (the one checkpoint-file reader), with one-line errors."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    state = load_file(path)
    missing = [k for k in ("epoch", "arch", "state_dict", "optimizer") if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{path}: not a SimSiam training checkpoint (missing {', '.join(missing)})")
    return state


def find_resume_checkpoint(resume: str, output_dir: Path) -> Path | None:
    """``auto``: the newest checkpoint in output_dir (None if there is none); ``none``: None; else a path."""
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    return Path(resume)


def check_same_model(path: Path, saved_config: dict | None, arch: str, model_cfg: dict) -> None:
    """A checkpoint of another architecture (or projector shape) cannot be resumed by this config."""
    saved_model = (saved_config or {}).get("model", {})
    keys = ("arch", "stem", "width", "dim", "pred_dim", "proj_layers", "predictor", "frozen_predictor", "bn_heads")
    diffs = [f"{k}={saved_model.get(k)!r} (config has {model_cfg[k]!r})"
             for k in keys if k in saved_model and saved_model[k] != model_cfg[k]]
    if not saved_model and arch != model_cfg["arch"]:
        diffs.append(f"arch={arch!r} (config has {model_cfg['arch']!r})")
    if diffs:
        raise UserError(f"{path}: cannot resume, the checkpoint's model differs: {'; '.join(diffs)}")
