"""ImageNet-style folders (``root/<class>/<image>``) with errors that name the file."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder

from simsiam_eval.errors import UserError


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; a corrupt or unreadable file is a UserError naming it."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise UserError(f"{path}: corrupt or unreadable image (not a format PIL reads, or a damaged header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: corrupt or unreadable image ({exc})") from None


def load_image_folder(root: Path, transform=None) -> ImageFolder:
    if not root.exists():
        raise UserError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise UserError(f"{root}: expected a folder of class sub-folders, found a file")
    try:
        dataset = ImageFolder(str(root), transform=transform, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"{root}: no images found ({str(exc).splitlines()[0]})") from None
    if len(dataset) == 0:
        raise UserError(f"{root}: empty dataset folder")
    return dataset
