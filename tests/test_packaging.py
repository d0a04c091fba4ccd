"""The installed package's metadata (FAISS extras that cannot leave the CPU build shadowing the GPU
one) and CI running the README's install and test commands."""
import re
from importlib.metadata import metadata, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DISTRIBUTION = "simsiam-eval"
ROOT = Path(__file__).resolve().parent.parent


def pulled(extra: str) -> set[str]:
    """Names of the requirements that the base install plus ``extra`` ("" for none) pulls."""
    requirements = [Requirement(line) for line in requires(DISTRIBUTION) or []]
    return {canonicalize_name(r.name) for r in requirements
            if r.marker is None or r.marker.evaluate({"extra": extra})}


def faiss_builds(names: set[str]) -> set[str]:
    return {name for name in names if name == "faiss" or name.startswith("faiss-")}


def test_base_install_has_no_faiss_and_no_extra_pulls_two_builds():
    extras = metadata(DISTRIBUTION).get_all("Provides-Extra") or []
    assert {"cpu", "gpu", "test", "timm", "slurm"} <= set(extras)
    assert faiss_builds(pulled("")) == set()
    for extra in extras:
        assert len(faiss_builds(pulled(extra))) <= 1, (extra, faiss_builds(pulled(extra)))


def test_gpu_extra_pulls_a_gpu_build_and_not_the_cpu_one():
    builds = faiss_builds(pulled("gpu"))
    assert builds and all(name.startswith("faiss-gpu") for name in builds)
    assert faiss_builds(pulled("cpu")) == {"faiss-cpu"}
    assert {"faiss-cpu", "timm"} <= pulled("test")


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = re.search(r"^(pip install torch==\S+ torchvision==\S+ -e \S+)", readme, re.MULTILINE).group(1)
    assert install in ci
    assert "python -m pytest -q -rs" in readme and "python -m pytest -q -rs" in ci
