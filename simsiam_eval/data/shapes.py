"""A deterministic synthetic data set of shapes.

Classification: ``DIR/{train,val}/<shape>/<n>.png`` (ImageFolder layout, one upright shape per image,
random size and position, one colour on grey).
Detection: scenes of several coloured, rotated shapes on textured backgrounds, with boxes and masks,
written both as ``DIR/voc`` (Pascal VOC: JPEGImages, Annotations xml, ImageSets/Main,
SegmentationObject, classes.txt) and ``DIR/coco`` (images/<split>/ +
annotations/instances_<split>.json with polygon masks).
Every image depends only on (seed, split, index), so the data set is the same on every machine.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from simsiam_eval.errors import UserError

CLASSES = ("circle", "square", "triangle", "star", "cross", "hexagon")
_SPLIT_CODE = {"train": 1, "val": 2}
MARKER = "SHAPES_DATASET.json"
SHAPE_COLOUR = (220, 200, 60)   # classification images: one colour on one background
BACKGROUND_GREY = 110.0


@dataclass(frozen=True)
class ShapesSettings:
    train_per_class: int = 200
    val_per_class: int = 50
    image_size: int = 64
    detection_train: int = 120
    detection_val: int = 40
    detection_size: int = 128
    seed: int = 0


def shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of one shape, as a closed polygon (circles are 48-gons)."""
    if kind == "circle":
        points = [(1.0, 2 * math.pi * i / 48) for i in range(48)]
    elif kind == "square":
        points = [(1.0, math.pi / 4 + math.pi / 2 * i) for i in range(4)]
    elif kind == "triangle":
        points = [(1.0, -math.pi / 2 + 2 * math.pi / 3 * i) for i in range(3)]
    elif kind == "hexagon":
        points = [(1.0, math.pi / 3 * i) for i in range(6)]
    elif kind == "star":
        points = [(1.0 if i % 2 == 0 else 0.45, -math.pi / 2 + math.pi / 5 * i) for i in range(10)]
    elif kind == "cross":
        a, b = 1.0, 0.35
        corners = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a),
                   (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
        points = [(math.hypot(x, y) / math.hypot(a, b) * 1.15, math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"unknown shape {kind}")
    return [(cx + radius * r * math.cos(t + angle), cy + radius * r * math.sin(t + angle)) for r, t in points]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A colour gradient with a weak fine-grained texture.

    The texture is deliberately faint: a strong per-image pattern (stripes, say) survives colour
    jitter and cropping, and self-supervised training then matches backgrounds instead of shapes.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(50, 205, size=3)
    tilt = rng.uniform(-50, 50, size=(2, 3))
    grain = np.asarray(Image.fromarray(rng.integers(0, 256, (size // 4, size // 4), dtype=np.uint8))
                       .resize((size, size), Image.BILINEAR), dtype=np.float32) / 255 - 0.5
    image = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1] + 16 * grain[..., None]
    image += rng.normal(0, 4, size=(size, size, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _colour(rng: np.random.Generator, avoid: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """A random colour; with ``avoid``, one that differs clearly from it (so the shape stands out)."""
    while True:
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if avoid is None or sum(abs(a - b) for a, b in zip(colour, avoid)) > 150:
            return colour


def render_classification(index: int, split: str, settings: ShapesSettings) -> tuple[Image.Image, int]:
    """Image ``index`` of a split: one upright shape, whose kind is the label, of random size and position.

    Every image has the same two colours (``SHAPE_COLOUR`` on a faintly noisy ``BACKGROUND_GREY``):
    colour differences between images are what SimSiam matches first (the recipe's colour jitter does
    not hide them), which tells images apart but not classes. Here two crops of an image share only
    the shape, while size and position - what random features are most sensitive to - vary widely.
    """
    rng = np.random.default_rng([settings.seed, _SPLIT_CODE[split], 0, index])
    label = index % len(CLASSES)
    size = settings.image_size
    noise = rng.normal(0, 4, size=(size, size, 3))
    image = Image.fromarray(np.clip(BACKGROUND_GREY + noise, 0, 255).astype(np.uint8))
    radius = rng.uniform(0.1, 0.42) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    ImageDraw.Draw(image).polygon(shape_polygon(CLASSES[label], cx, cy, radius, 0.0), fill=SHAPE_COLOUR)
    return image, label


def render_scene(index: int, split: str, settings: ShapesSettings) -> tuple[Image.Image, list[dict]]:
    """A detection scene: 1-3 shapes; each object has a label, a box (x0, y0, x1, y1) and a polygon."""
    rng = np.random.default_rng([settings.seed, _SPLIT_CODE[split], 1, index])
    size = settings.detection_size
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, 4))):
        label = int(rng.integers(len(CLASSES)))
        radius = rng.uniform(0.12, 0.25) * size
        cx, cy = rng.uniform(radius, size - radius, size=2)
        if any(math.hypot(cx - o["center"][0], cy - o["center"][1]) < radius + o["radius"] for o in objects):
            continue  # keep shapes apart so every mask is exactly its polygon
        polygon = shape_polygon(CLASSES[label], cx, cy, radius, rng.uniform(0, 2 * math.pi))
        polygon = [(min(max(x, 0.0), size - 1.0), min(max(y, 0.0), size - 1.0)) for x, y in polygon]
        draw.polygon(polygon, fill=_colour(rng, avoid=image.getpixel((int(cx), int(cy)))))
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        objects.append({"label": label, "box": (min(xs), min(ys), max(xs), max(ys)),
                        "polygon": polygon, "center": (cx, cy), "radius": radius})
    return image, objects


def _write_classification(root: Path, settings: ShapesSettings) -> None:
    for split, per_class in (("train", settings.train_per_class), ("val", settings.val_per_class)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class * len(CLASSES)):
            image, label = render_classification(index, split, settings)
            image.save(root / split / CLASSES[label] / f"{index:05d}.png")


def _voc_xml(filename: str, size: int, objects: list[dict]) -> ET.ElementTree:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "VOC2007"
    ET.SubElement(annotation, "filename").text = filename
    size_node = ET.SubElement(annotation, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_node, tag).text = str(value)
    for obj in objects:
        node = ET.SubElement(annotation, "object")
        ET.SubElement(node, "name").text = CLASSES[obj["label"]]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        x0, y0, x1, y1 = obj["box"]  # VOC boxes are 1-based pixel indices
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            ET.SubElement(box, tag).text = str(int(round(value)))
    return ET.ElementTree(annotation)


def _write_detection(root: Path, settings: ShapesSettings) -> None:
    voc, coco = root / "voc", root / "coco"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main", "SegmentationObject"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    for split, count in (("train", settings.detection_train), ("val", settings.detection_val)):
        (coco / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations, ids = [], [], []
        for index in range(count):
            image, objects = render_scene(index, split, settings)
            stem = f"{split}_{index:05d}"
            ids.append(stem)
            image.save(voc / "JPEGImages" / f"{stem}.jpg", quality=95)
            image.save(coco / "images" / split / f"{stem}.jpg", quality=95)
            _voc_xml(f"{stem}.jpg", settings.detection_size, objects).write(voc / "Annotations" / f"{stem}.xml")
            instance_map = Image.new("L", image.size, 0)
            for number, obj in enumerate(objects, start=1):
                ImageDraw.Draw(instance_map).polygon(obj["polygon"], fill=number)
            instance_map.save(voc / "SegmentationObject" / f"{stem}.png")
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{stem}.jpg",
                           "width": settings.detection_size, "height": settings.detection_size})
            for obj in objects:
                x0, y0, x1, y1 = obj["box"]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": obj["label"] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": _polygon_area(obj["polygon"]),
                    "segmentation": [[c for point in obj["polygon"] for c in point]], "iscrowd": 0})
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        dataset = {"images": images, "annotations": annotations, "categories": categories}
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))
    (voc / "classes.txt").write_text("\n".join(CLASSES) + "\n")  # every class, even one a tiny split lacks
    main = voc / "ImageSets" / "Main"
    (main / "trainval.txt").write_text((main / "train.txt").read_text())
    (main / "test.txt").write_text((main / "val.txt").read_text())


def _polygon_area(polygon: list[tuple[float, float]]) -> float:
    xs, ys = np.array([p[0] for p in polygon]), np.array([p[1] for p in polygon])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def write_shapes_dataset(root: str | os.PathLike, settings: ShapesSettings = ShapesSettings(),
                         detection: bool = True) -> Path:
    """Write the data set to ``root`` (atomically: a temporary folder renamed into place)."""
    root = Path(root)
    if (root / MARKER).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_classification(staging, settings)
        if detection:
            _write_detection(staging, settings)
        meta = {"classes": list(CLASSES), "settings": settings.__dict__, "detection": detection}
        (staging / MARKER).write_text(json.dumps(meta, indent=2))
        try:
            staging.rename(root)
        except OSError:
            if not (root / MARKER).is_file():  # another process did not win the race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def shapes_image_size(root: Path) -> int:
    """The side of the classification images of the shapes data set at ``root`` (from its marker)."""
    try:
        return int(json.loads((root / MARKER).read_text())["settings"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{root / MARKER}: unreadable shapes marker ({exc})") from None


def ensure_shapes_dataset(root: Path) -> Path:
    """Generate the default shapes data set at ``root`` unless it is already there."""
    if (root / MARKER).is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root}: exists but is not a shapes data set (no {MARKER}); pick another folder")
    if root.exists():
        root.rmdir()
    print(f"generating the shapes data set in {root} ...", flush=True)
    return write_shapes_dataset(root)
