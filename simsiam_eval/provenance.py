"""What produced a result: package versions, git revision, file hashes."""
from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import simsiam_eval


def versions() -> dict[str, str]:
    """Versions of the packages that decide numbers."""
    import numpy
    import torch
    import torchvision

    found = {
        "simsiam_eval": simsiam_eval.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": str(numpy.__version__),
    }
    try:
        import faiss

        found["faiss"] = str(faiss.__version__)
    except ImportError:
        pass
    return found


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git commit of this source tree (with '-dirty' if modified), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
