"""``knn`` evaluation of a checkpoint: load it, extract (or reuse cached) features, vote, build the record."""
from __future__ import annotations

import time

from simsiam_eval.config import Config, require_keys
from simsiam_eval.data.sizes import evaluation_size, evaluation_transform, print_upsampling_note
from simsiam_eval.data.transforms import INTERPOLATIONS, normalization_settings
from simsiam_eval.distributed import DistInfo
from simsiam_eval.errors import UserError
from simsiam_eval.features import (FeatureCache, FeatureSet, check_same_classes, dataset_features, feature_std,
                                   load_frozen_backbone)
from simsiam_eval.knn.classify import flat_metrics, knn_classify
from simsiam_eval.knn.defaults import BACKENDS, PRESETS, SEARCH_PRECISIONS, WEIGHTINGS
from simsiam_eval.precision import precision_name
from simsiam_eval.results.records import build_record


def apply_preset(cfg: Config, explicit: set[str]) -> Config:
    """Set k and temperature from ``cfg.preset`` unless they were given explicitly."""
    if not cfg.preset:
        return cfg
    if cfg.preset not in PRESETS:
        raise UserError(f"unknown kNN preset '{cfg.preset}' (choose from {', '.join(PRESETS)})")
    for key, value in PRESETS[cfg.preset].items():
        if key not in explicit:
            cfg[key] = list(value) if isinstance(value, list) else value
    return cfg


def check_knn_config(cfg: Config) -> None:
    """One-line errors for missing data/checkpoint and unknown choices or k values."""
    require_keys(cfg, ("checkpoint", "train", "val"))
    if cfg.weighting not in WEIGHTINGS:
        raise UserError(f"unknown weighting '{cfg.weighting}' (choose from {', '.join(WEIGHTINGS)})")
    if cfg.backend not in BACKENDS:
        raise UserError(f"unknown backend '{cfg.backend}' (choose from {', '.join(BACKENDS)})")
    if cfg.search_precision not in SEARCH_PRECISIONS:
        raise UserError(f"unknown search_precision '{cfg.search_precision}' (choose from {', '.join(SEARCH_PRECISIONS)})")
    if cfg.interpolation not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation '{cfg.interpolation}' (choose from {', '.join(INTERPOLATIONS)})")
    ks = cfg.k if isinstance(cfg.k, list) else [cfg.k]
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise UserError(f"k must be one or more positive integers, got {cfg.k!r}")


def checkpoint_features(cfg: Config, info: DistInfo, transform) -> tuple[dict, dict[str, FeatureSet], dict]:
    """Read ``cfg.checkpoint`` and embed ``cfg.train`` and ``cfg.val`` through the feature cache.

    Returns the checkpoint's record part, the feature sets and the seconds spent per split.
    """
    checkpoint, backbone, model_id = load_frozen_backbone(cfg.checkpoint, cfg.format, cfg.arch or None, info.device)
    cache = FeatureCache.optional(cfg.cache, cfg.cache_dir, cfg.cache_dtype)
    precision = precision_name(cfg.amp, info.device, cfg.cpu_bf16)
    sets, seconds = {}, {}
    for split in ("train", "val"):
        start = time.perf_counter()
        sets[split] = dataset_features(backbone, cfg[split], transform, info.device, model_id=model_id, cache=cache,
                                       batch_size=cfg.batch_size, workers=cfg.workers, precision=precision,
                                       progress=cfg.progress)
        seconds[f"features_{split}"] = time.perf_counter() - start
    check_same_classes(sets["train"].classes, sets["val"].classes, cfg.train, cfg.val)
    return checkpoint, sets, seconds


def run_knn(cfg: Config, info: DistInfo) -> dict:
    """The kNN record of ``cfg.checkpoint`` on ``cfg.train`` (bank) / ``cfg.val`` (queries)."""
    check_knn_config(cfg)
    started, clock = time.time(), time.perf_counter()
    ks = cfg.k if isinstance(cfg.k, list) else [cfg.k]
    image_size = evaluation_size(cfg.image_size, cfg.train)
    if info.is_main:
        print_upsampling_note(cfg.train, image_size)
    transform = evaluation_transform(image_size, cfg.train, cfg.val, resize=cfg.resize or None,
                                     interpolation=cfg.interpolation)
    checkpoint, sets, seconds = checkpoint_features(cfg, info, transform)
    train, val = sets["train"], sets["val"]
    result = knn_classify(train.features, train.labels, val.features, val.labels, ks=ks,
                          temperature=cfg.temperature, weighting=cfg.weighting, backend=cfg.backend,
                          num_classes=len(train.classes) or None, device=info.device,
                          search_precision=cfg.search_precision)
    seconds.update(result.seconds)
    data = {"train": cfg.train, "val": cfg.val, "num_train": len(train), "num_val": len(val),
            "num_classes": len(train.classes)}
    settings = {"k": ks, "temperature": cfg.temperature, "precision": precision_name(cfg.amp, info.device, cfg.cpu_bf16),
                "weighting": cfg.weighting, "preset": cfg.preset or None, "backend": result.backend,
                "search_precision": cfg.search_precision,
                "feature_dim": int(train.features.shape[1]), "image_size": image_size, "transform": repr(transform),
                "normalization": normalization_settings(),
                "per_k": {str(k): m for k, m in result.metrics.items()},
                "timings": {k: round(v, 3) for k, v in seconds.items()}}
    metrics = flat_metrics(result)
    if len(train) > 1:
        metrics["feature_std"] = feature_std(train.features)
    return build_record("knn", metrics, checkpoint, data, settings, started, time.perf_counter() - clock,
                        tags=cfg.tags, name=cfg.name or None)
