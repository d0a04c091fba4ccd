"""Pascal VOC detection AP, the devkit's algorithm as Detectron2's ``voc_eval`` computes it, but on
ground truth already in memory (so that VOC-style folders with float coordinates or empty
``<difficult/>`` tags, which Detectron2's xml reader rejects, can be evaluated).

Conventions kept from the devkit: boxes in 1-based pixel coordinates with ``+1`` in widths and
heights, a detection matches when IoU > threshold (strictly), difficult objects neither count as
positives nor as false positives, a second detection of a matched object is a false positive.
AP is the 11-point interpolation (VOC2007) or the area under the interpolated PR curve.
One difference: a class without any (non-difficult) object in the split has no AP and is left out
of the means (Detectron2 averages in a 0 or a NaN for it), as COCO's evaluation does.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Box = Sequence[float]


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a PR curve: 11-point (VOC2007) or area under the monotone precision envelope."""
    if use_07_metric:
        return float(sum((np.max(precision[recall >= t]) if np.any(recall >= t) else 0.0)
                         for t in np.arange(0.0, 1.1, 0.1)) / 11.0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    widths = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0.0)
    heights = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0.0)
    inter = widths * heights
    union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
             + (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0) - inter)
    return inter / union


def class_ap(detections: Sequence[tuple[str, float, Box]],
             ground_truth: Mapping[str, Sequence[tuple[Box, bool]]],
             iou_threshold: float, use_07_metric: bool) -> float:
    """AP of one class: ``detections`` are (image id, score, box), ``ground_truth`` maps every image
    id of the split to its (box, difficult) objects of this class; NaN when the class has no
    non-difficult object."""
    gt = {image: (np.array([b for b, _ in objs], dtype=float).reshape(-1, 4),
                  np.array([d for _, d in objs], dtype=bool), np.zeros(len(objs), dtype=bool))
          for image, objs in ground_truth.items()}
    positives = sum(int((~difficult).sum()) for _, difficult, _ in gt.values())
    if positives == 0:
        return float("nan")
    scores = np.array([score for _, score, _ in detections], dtype=float)
    order = np.argsort(-scores)
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, index in enumerate(order):
        image, _, box = detections[index]
        boxes, difficult, taken = gt[image]
        overlaps = _iou(np.asarray(box, dtype=float), boxes) if len(boxes) else np.zeros(0)
        best = int(np.argmax(overlaps)) if len(overlaps) else -1
        if best >= 0 and overlaps[best] > iou_threshold:
            if not difficult[best]:
                if taken[best]:
                    fp[rank] = 1.0
                else:
                    tp[rank], taken[best] = 1.0, True
        else:
            fp[rank] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / float(positives)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(recall, precision, use_07_metric)


THRESHOLDS = tuple(range(50, 100, 5))


def per_class_ap(detections: Mapping[str, Sequence[tuple[str, float, Box]]],
                 ground_truth: Mapping[str, Iterable], class_names: Sequence[str],
                 use_07_metric: bool) -> dict[int, dict[str, float]]:
    """AP in percent per IoU threshold (50, 55, ..., 95) and class name.

    ``detections`` maps class name -> (image id, score, 1-based box); ``ground_truth`` maps image id
    -> objects with ``name``, ``box`` and ``difficult`` (``datasets.VocObject``).
    """
    table: dict[int, dict[str, float]] = {t: {} for t in THRESHOLDS}
    for name in class_names:
        gt = {image: [(o.box, o.difficult) for o in objs if o.name == name] for image, objs in ground_truth.items()}
        for threshold in THRESHOLDS:
            table[threshold][name] = 100.0 * class_ap(detections.get(name, []), gt, threshold / 100.0, use_07_metric)
    return table


def voc_metrics(detections: Mapping[str, Sequence[tuple[str, float, Box]]],
                ground_truth: Mapping[str, Iterable], class_names: Sequence[str],
                use_07_metric: bool) -> dict[str, float]:
    """AP (mean over IoU 0.50:0.05:0.95), AP50 and AP75 in percent, each the mean over the classes
    that have objects (arguments as ``per_class_ap``)."""
    table = per_class_ap(detections, ground_truth, class_names, use_07_metric)
    scored = [name for name in class_names if not np.isnan(table[50][name])]
    if not scored:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    means = {t: float(np.mean([table[t][name] for name in scored])) for t in THRESHOLDS}
    return {"AP": float(np.mean(list(means.values()))), "AP50": means[50], "AP75": means[75]}
