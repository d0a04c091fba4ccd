"""Datasets behind one spec string, and the transforms of the published protocols."""
from simsiam_eval.data.specs import DatasetSpec, open_dataset, parse_spec

__all__ = ["DatasetSpec", "open_dataset", "parse_spec"]
