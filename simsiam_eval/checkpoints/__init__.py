"""The one checkpoint loader: read any supported format into a canonical torchvision ResNet backbone.

    ckpt = read_checkpoint("checkpoint_0099.pth.tar")   # or "random:resnet18:cifar"
    model = build_backbone(ckpt)                         # eval mode, fc = Identity -> pool5 features
    ckpt.record()                                        # {path, sha256, arch, stem, width, format}
"""
from simsiam_eval.checkpoints.canonical import ARCH_NAMES, CanonicalCheckpoint, ResNetSpec, build_backbone, infer_spec
from simsiam_eval.checkpoints.read import canonicalize, read_checkpoint
from simsiam_eval.checkpoints.readers import FORMAT_NAMES, FORMATS, detect_format

__all__ = ["ARCH_NAMES", "FORMATS", "FORMAT_NAMES", "CanonicalCheckpoint", "ResNetSpec", "build_backbone",
           "canonicalize", "detect_format", "infer_spec", "read_checkpoint"]
