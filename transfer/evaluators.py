"""Evaluators, chosen by the data set's metadata (``evaluator_type``).

- ``coco``: Detectron2's COCOEvaluator (box, and mask for Mask R-CNN); annotation ids are renumbered
  from 1 when a json has an id <= 0, because pycocotools marks a match by a non-zero ground-truth
  id and would count every detection matched to annotation 0 as a false positive.
- ``pascal_voc`` (Detectron2's own VOC registrations): its PascalVOCDetectionEvaluator (AP, AP50,
  AP75), unchanged, so that numbers on the standard VOC07 test set are Detectron2's.
- ``pascal_voc_folder`` (``voc:`` data sets): the same evaluator with the ground truth read by our
  tolerant xml reader (empty tags, float coordinates) and AP computed by ``voc_metric``.
"""
from __future__ import annotations

import os
from collections import OrderedDict, defaultdict
from pathlib import Path

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm

from transfer.datasets import voc_ground_truth
from transfer.voc_metric import voc_metrics


class COCOEvaluatorAnyIds(COCOEvaluator):
    """COCOEvaluator for json files whose annotation ids may start at 0."""

    def __init__(self, dataset_name, **kwargs):
        super().__init__(dataset_name, **kwargs)
        annotations = self._coco_api.dataset.get("annotations", [])
        if any(ann["id"] <= 0 for ann in annotations):
            self._logger.info(f"{dataset_name}: annotation ids renumbered from 1 for pycocotools")
            for number, ann in enumerate(annotations, start=1):
                ann["id"] = number
            self._coco_api.createIndex()


class VOCFolderEvaluator(PascalVOCDetectionEvaluator):
    """PascalVOCDetectionEvaluator whose ground truth comes from ``transfer.datasets.parse_voc_xml``."""

    def evaluate(self):
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        detections = defaultdict(list)  # class name -> (image id, score, box), lines as the parent writes them
        for predictions in all_predictions:
            for class_id, lines in predictions.items():
                for line in lines:
                    image_id, score, *box = line.split(" ")
                    detections[self._class_names[class_id]].append((image_id, float(score), [float(v) for v in box]))
        meta = MetadataCatalog.get(self._dataset_name)
        self._logger.info(f"Evaluating {self._dataset_name} with the {'VOC2007 11-point' if self._is_2007 else 'area'} AP")
        ground_truth = voc_ground_truth(Path(meta.dirname), meta.split)
        return OrderedDict(bbox=voc_metrics(detections, ground_truth, self._class_names, self._is_2007))


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """The evaluator for a registered test set (see the module docstring)."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if kind == "coco":
        return COCOEvaluatorAnyIds(dataset_name, output_dir=output_folder)
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if kind == "pascal_voc_folder":
        return VOCFolderEvaluator(dataset_name)
    raise NotImplementedError(f"no evaluator for {dataset_name} (evaluator_type {kind!r}); "
                              f"register it as a voc: or coco: data set")
