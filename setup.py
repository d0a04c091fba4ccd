"""The package list, which pyproject.toml cannot express: every package of the source tree, plus the
repository's configs/ folder shipped as simsiam_eval.configs (the presets; package data in pyproject.toml)."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["simsiam_eval*", "pretrain*", "transfer*"]) + ["simsiam_eval.configs"],
      package_dir={"simsiam_eval.configs": "configs"})
