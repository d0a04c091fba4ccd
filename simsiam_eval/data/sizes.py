"""The evaluation image size: the data's native size unless one is given, and a note when it upsamples.

kNN, the linear probe and the pretraining kNN monitor take ``image_size: 0`` to mean the native size
of the data set (:func:`~simsiam_eval.data.specs.native_image_size`: CIFAR 32, MNIST-family 28,
shapes as generated) and 224 for a folder of images; an explicit size always wins. At its native
size a data set is evaluated as it is (no resize, no crop).
"""
from __future__ import annotations

from torchvision import transforms as T

from simsiam_eval.data.specs import DatasetSpec, native_image_size
from simsiam_eval.data.transforms import eval_transform

FOLDER_IMAGE_SIZE = 224  # main_lincls / eval_knn: CenterCrop(224)
NOTE_ABOVE = 2.0  # upsampling factor (per side) beyond which a run says so


def evaluation_size(requested: int, spec: str | DatasetSpec) -> int:
    """``requested`` if given (> 0), else the native size of ``spec``'s images, else 224."""
    if requested:
        return int(requested)
    return native_image_size(spec) or FOLDER_IMAGE_SIZE


def is_native(size: int, *specs: str | DatasetSpec) -> bool:
    """Whether every data set in ``specs`` has square images of exactly ``size`` px (used as they are).

    Decided per data set, never per image: a folder's images (ImageNet) always get main_lincls'
    Resize + CenterCrop, even one that happens to be ``size`` square.
    """
    return all(native_image_size(spec) == size for spec in specs)


def evaluation_transform(size: int, *specs: str | DatasetSpec, resize: int | None = None,
                         interpolation: str = "bilinear") -> T.Compose:
    """main_lincls' eval transform at ``size`` for the data sets ``specs``: their images as they are when
    every one of them is natively ``size`` square (:func:`is_native`), else Resize + CenterCrop."""
    return eval_transform(size, resize, interpolation, native=is_native(size, *specs))


def upsampling_note(spec: str | DatasetSpec, size: int) -> str | None:
    """One line saying that ``size`` upsamples ``spec``'s images more than 2x per side, else None."""
    native = native_image_size(spec)
    if not native or size <= NOTE_ABOVE * native:
        return None
    factor = size / native
    return (f"note: evaluating the {native}-px images of {spec} at {size} px upsamples them {factor:.1f}x per side "
            f"({factor * factor:.0f}x the pixels to embed); without an image size they are used at {native} px")


def print_upsampling_note(spec: str | DatasetSpec, size: int) -> None:
    """Print :func:`upsampling_note` when there is one."""
    note = upsampling_note(spec, size)
    if note:
        print(note, flush=True)
