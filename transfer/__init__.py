"""Detection transfer with Detectron2: R50-C4 Faster/Mask R-CNN fine-tuning of any checkpoint (and a
small-ResNet C4 model, BasicBlocks with the CIFAR or ImageNet stem, for the demo's smoke run).

Modules without a Detectron2 import (usable and tested where Detectron2 is absent):
``configs`` (recipes, ``_BASE_`` resolution), ``datasets`` (VOC xml / COCO json into Detectron2's
dict format, dataset specs, missing parts), ``voc_metric`` (Pascal VOC AP), ``scaling`` (batch and
schedule for the number of devices), ``trials`` (seeds, resume, mean and sample std), ``weights``
(backbone tensor matching), ``preflight``, ``verify`` (the Detectron2 check of a conversion; imports
Detectron2 only when it runs).

Modules that import Detectron2: ``roi_heads`` (``Res5ROIHeadsExtraNorm``, the BasicBlock res5 heads),
``backbone`` (``build_basic_resnet_backbone``, ``MODEL.RESNETS.STEM_TYPE``), ``evaluators``,
``register`` (dataset registration) and ``trainer`` (the trainer and Detectron2's command line,
run by ``tools/train_net.py``).
"""
