"""Detection transfer with Detectron2: R50-C4 Faster/Mask R-CNN fine-tuning of any checkpoint.

Modules without a Detectron2 import (usable and tested where Detectron2 is absent):
``configs`` (recipes, ``_BASE_`` resolution), ``datasets`` (VOC xml / COCO json into Detectron2's
dict format, dataset specs, missing parts), ``voc_metric`` (Pascal VOC AP), ``scaling`` (batch and
schedule for the number of devices), ``trials`` (seeds, resume, mean and sample std), ``weights``
(backbone tensor matching), ``preflight``.

Modules that import Detectron2: ``roi_heads`` (``Res5ROIHeadsExtraNorm``), ``evaluators``,
``register`` (dataset registration) and ``train_net`` (the trainer, Detectron2's command line).
"""
