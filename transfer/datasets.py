"""Detection data sets in Detectron2's list-of-dicts format, read without Detectron2.

A dataset name in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is one of

    voc_2007_trainval, coco_2017_val, ...   a standard tree under $DETECTRON2_DATASETS
                                            (VOC2007/, VOC2012/, coco/), registered by Detectron2
    voc:FOLDER@SPLIT                        a VOC-style folder: FOLDER/Annotations/*.xml,
                                            FOLDER/JPEGImages/, FOLDER/ImageSets/Main/SPLIT.txt
    coco:FILE.json[@IMAGE_ROOT]             COCO instances json and its image folder (default:
                                            ROOT/<split>, ROOT/images/<split> or ROOT/images for
                                            ROOT/annotations/instances_<split>.json)

Relative paths are read under $DETECTRON2_DATASETS (default ``./datasets``), as Detectron2 does
for its own names. Real-world files are accepted: VOC xml with empty tags (``<difficult/>``) and
float coordinates, COCO json whose ids start at 0.

VOC class names: FOLDER/classes.txt (one per line) if present, else the 20 Pascal VOC classes when
every name found is one of them, else the sorted names found in FOLDER/Annotations.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simsiam_eval.errors import UserError

# Detectron2's BoxMode values (an IntEnum, so these ints compare equal to its members).
BOX_MODE_XYXY_ABS = 0
BOX_MODE_XYWH_ABS = 1

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
CLASS_FILES = ("classes.txt", "labels.txt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass(frozen=True)
class DatasetSource:
    """Where a named detection data set lives on disk."""

    name: str
    kind: str                       # "voc" or "coco"
    path: Path                      # VOC: the folder; COCO: the json file
    split: str = ""                 # VOC image set (ImageSets/Main/<split>.txt)
    image_root: Path | None = None  # COCO image folder
    year: int = 2012                # VOC AP metric: 2007 = 11-point, else area under the PR curve
    builtin: bool = False           # registered by Detectron2 itself (standard tree)


# Standard trees, as Detectron2's builtin registration lays them out under $DETECTRON2_DATASETS.
_STANDARD_VOC = {f"voc_{year}_{split}": (f"VOC{year}", split, year)
                 for year in (2007, 2012) for split in ("trainval", "train", "val", "test")
                 if not (year == 2012 and split == "test")}
_STANDARD_COCO = {f"coco_{year}_{split}": (f"coco/annotations/instances_{split}{year}.json", f"coco/{split}{year}")
                  for year in (2014, 2017) for split in ("train", "val")}


def dataset_root() -> Path:
    """$DETECTRON2_DATASETS (default ``datasets``), the folder standard trees and relative specs live in."""
    return Path(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")))


def _under(root: Path, path: str) -> Path:
    candidate = Path(os.path.expanduser(path))
    return candidate if candidate.is_absolute() else root / candidate


def parse_dataset_name(name: str, root: Path | None = None) -> DatasetSource | None:
    """The source of a standard name or a ``voc:`` / ``coco:`` spec; None for any other name
    (a data set registered some other way, which Detectron2 must know)."""
    root = dataset_root() if root is None else root
    if name in _STANDARD_VOC:
        folder, split, year = _STANDARD_VOC[name]
        return DatasetSource(name, "voc", root / folder, split=split, year=year, builtin=True)
    if name in _STANDARD_COCO:
        json_file, images = _STANDARD_COCO[name]
        return DatasetSource(name, "coco", root / json_file, image_root=root / images, builtin=True)
    kind, sep, rest = name.partition(":")
    if not sep or kind not in ("voc", "coco"):
        return None
    if kind == "voc":
        folder, at, split = rest.rpartition("@")
        if not at or not folder or not split:
            raise UserError(f"dataset '{name}': a VOC folder is given as voc:FOLDER@SPLIT (SPLIT names "
                            f"ImageSets/Main/SPLIT.txt)")
        path = _under(root, folder)
        return DatasetSource(name, "voc", path, split=split, year=2007 if path.name == "VOC2007" else 2012)
    json_part, at, image_root = rest.partition(".json@")
    json_file = _under(root, json_part + ".json" if at else rest)
    if json_file.suffix != ".json":
        raise UserError(f"dataset '{name}': a COCO data set is given as coco:FILE.json[@IMAGE_ROOT]")
    images = _under(root, image_root) if at else default_image_root(json_file)
    return DatasetSource(name, "coco", json_file, image_root=images)


def default_image_root(json_file: Path) -> Path | None:
    """The image folder that goes with a COCO json, by the usual layouts; None if none exists."""
    if json_file.parent.name == "annotations":
        base, split = json_file.parent.parent, json_file.stem.removeprefix("instances_")
        candidates = [base / split, base / "images" / split, base / "images"]
    else:
        candidates = [json_file.parent / "images", json_file.parent]
    return next((c for c in candidates if c.is_dir()), None)


def missing_parts(source: DatasetSource) -> list[str]:
    """The files and folders a data set needs that are not on disk (empty when complete)."""
    if source.kind == "voc":
        needed = [(source.path, True), (source.path / "Annotations", True), (source.path / "JPEGImages", True),
                  (source.path / "ImageSets" / "Main" / f"{source.split}.txt", False)]
    else:
        needed = [(source.path, False)]
        if source.image_root is None:
            return [str(p) for p, _ in needed if not p.is_file()] + [
                f"an image folder for {source.path} (give coco:FILE.json@IMAGE_ROOT)"]
        needed.append((source.image_root, True))
    return [str(p) + ("/" if is_dir else "") for p, is_dir in needed
            if not (p.is_dir() if is_dir else p.is_file())]


def check_present(source: DatasetSource) -> None:
    """A one-line UserError naming every missing part of a data set."""
    missing = missing_parts(source)
    if missing:
        where = f" (DETECTRON2_DATASETS={dataset_root()})" if source.builtin else ""
        raise UserError(f"dataset {source.name}{where}: missing {', '.join(missing)}")


# ---------------------------------------------------------------------------------------- VOC


@dataclass(frozen=True)
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written (1-based pixels)
    difficult: bool


def _number(node: ET.Element | None, tag: str) -> float | None:
    """A numeric child's value; None when the tag is absent or empty."""
    child = node.find(tag) if node is not None else None
    text = (child.text or "").strip() if child is not None else ""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"<{tag}> holds '{text}', not a number") from None


def parse_voc_xml(path: Path) -> tuple[int | None, int | None, str | None, list[VocObject]]:
    """(width, height, filename, objects) of one VOC annotation; sizes None when absent or 0."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise UserError(f"{path}: not a readable VOC annotation ({exc})") from None
    try:
        size = root.find("size")
        width, height = _number(size, "width"), _number(size, "height")
        objects = []
        for obj in root.findall("object"):
            name = (obj.findtext("name") or "").strip()
            box = obj.find("bndbox")
            coords = tuple(_number(box, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
            if not name or None in coords:
                raise UserError("an <object> lacks its <name> or a <bndbox> coordinate")
            objects.append(VocObject(name, coords, bool(_number(obj, "difficult") or 0)))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    filename = (root.findtext("filename") or "").strip() or None
    return (int(width) if width else None), (int(height) if height else None), filename, objects


def voc_image_ids(folder: Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Main/<split>.txt`` (first token of each non-empty line)."""
    path = folder / "ImageSets" / "Main" / f"{split}.txt"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise UserError(f"VOC image set not found: {path}") from None
    return [line.split()[0] for line in lines if line.strip()]


def voc_class_names(folder: Path) -> list[str]:
    """Class names of a VOC-style folder (see the module docstring for the rule)."""
    for name in CLASS_FILES:
        if (folder / name).is_file():
            return [line.strip() for line in (folder / name).read_text().splitlines() if line.strip()]
    found = {obj.name for xml in sorted((folder / "Annotations").glob("*.xml")) for obj in parse_voc_xml(xml)[3]}
    if not found:
        raise UserError(f"{folder}: no object names in Annotations/*.xml and no classes.txt")
    return list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)


def _voc_image(folder: Path, image_id: str, filename: str | None) -> Path:
    images = folder / "JPEGImages"
    candidates = [images / f"{image_id}.jpg"] + ([images / filename] if filename else [])
    candidates += [images / f"{image_id}{suffix}" for suffix in _IMAGE_SUFFIXES[1:]]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except OSError as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None


def load_voc_folder(folder: Path, split: str, class_names: list[str] | tuple[str, ...]) -> list[dict]:
    """Detectron2 dicts of a VOC split: boxes XYXY_ABS in 0-based continuous coordinates (xmin - 1,
    ymin - 1, as Detectron2's own VOC loader); difficult objects kept for training, as it does."""
    index = {name: i for i, name in enumerate(class_names)}
    dicts = []
    for image_id in voc_image_ids(folder, split):
        xml = folder / "Annotations" / f"{image_id}.xml"
        width, height, filename, objects = parse_voc_xml(xml)
        image = _voc_image(folder, image_id, filename)
        if not width or not height:
            width, height = _image_size(image)
        annotations = []
        for obj in objects:
            if obj.name not in index:
                raise UserError(f"{xml}: class '{obj.name}' is not among the {len(class_names)} classes "
                                f"({', '.join(class_names[:6])}{', ...' if len(class_names) > 6 else ''})")
            check_voc_box(xml, obj, width, height)
            x0, y0, x1, y1 = obj.box
            annotations.append({"category_id": index[obj.name], "bbox": [x0 - 1.0, y0 - 1.0, x1, y1],
                                "bbox_mode": BOX_MODE_XYXY_ABS, "difficult": obj.difficult})
        dicts.append({"file_name": str(image), "image_id": image_id, "height": height, "width": width,
                      "annotations": annotations})
    return dicts


def check_voc_box(xml: Path, obj: VocObject, width: int, height: int) -> None:
    """A box with its corners in order that overlaps the image (a box partly outside is clipped by Detectron2,
    as for its own VOC loader; one entirely outside can only be an annotation error)."""
    x0, y0, x1, y1 = obj.box
    where = f"{xml}: object '{obj.name}'"
    if x1 < x0 or y1 < y0:
        axis = f"xmax {x1:g} < xmin {x0:g}" if x1 < x0 else f"ymax {y1:g} < ymin {y0:g}"
        raise UserError(f"{where} has {axis}")
    if x0 > width or y0 > height or x1 < 1 or y1 < 1:
        raise UserError(f"{where} has its box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) entirely outside the "
                        f"{width}x{height} image")


def voc_ground_truth(folder: Path, split: str) -> dict[str, list[VocObject]]:
    """The objects of every image of a split, as written in the xml (for the VOC evaluator)."""
    return {image_id: parse_voc_xml(folder / "Annotations" / f"{image_id}.xml")[3]
            for image_id in voc_image_ids(folder, split)}


# --------------------------------------------------------------------------------------- COCO


COCO_REQUIRED = {"images": ("id", "file_name", "height", "width"), "categories": ("id", "name"),
                 "annotations": ("image_id", "category_id", "bbox")}


def read_coco_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"COCO json not readable: {path} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise UserError(f"{path}: not a COCO instances file (needs images, annotations and categories)")
    for part, keys in COCO_REQUIRED.items():
        for i, record in enumerate(data[part]):
            missing = [k for k in keys if not isinstance(record, dict) or k not in record]
            if missing:
                raise UserError(f"{path}: {part}[{i}] lacks {', '.join(repr(k) for k in missing)}")
    return data


def coco_categories(data: dict) -> tuple[list[str], dict[int, int]]:
    """Class names in category-id order and the map dataset id -> contiguous id (0..K-1), whatever
    the ids (from 0, from 1, with gaps)."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    return [c["name"] for c in categories], {c["id"]: i for i, c in enumerate(categories)}


def _coco_segmentation(segm: Any) -> Any:
    """Valid polygons (>= 3 points) or a compressed RLE; None when nothing usable is left."""
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):  # uncompressed RLE
            from pycocotools import mask as mask_util

            return mask_util.frPyObjects(segm, *segm["size"])
        return segm
    polygons = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


def load_coco_json(json_file: Path, image_root: Path) -> list[dict]:
    """Detectron2 dicts of a COCO instances file: boxes XYWH_ABS, contiguous category ids, polygons
    or RLE; annotations marked ``ignore`` or with no usable segmentation left out (as Detectron2)."""
    data = read_coco_json(json_file)
    _, id_map = coco_categories(data)
    by_image: dict[Any, list[dict]] = {}
    for ann in data["annotations"]:
        if ann.get("ignore", 0):
            continue
        if ann.get("category_id") not in id_map:
            raise UserError(f"{json_file}: annotation {ann.get('id')} has category_id "
                            f"{ann.get('category_id')!r}, not among the categories")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise UserError(f"{json_file}: annotation {ann.get('id')} has bbox {bbox!r}, not [x, y, width, height]")
        obj = {"bbox": [float(v) for v in bbox], "bbox_mode": BOX_MODE_XYWH_ABS,
               "category_id": id_map[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0))}
        if "segmentation" in ann:
            if not ann["segmentation"] or ann["segmentation"] == [[]]:
                raise UserError(f"{json_file}: annotation {ann.get('id')} has an empty segmentation; give its "
                                "polygons or RLE, or drop the segmentation key for a box-only data set")
            segm = _coco_segmentation(ann["segmentation"])
            if segm is None:
                continue
            obj["segmentation"] = segm
        by_image.setdefault(ann["image_id"], []).append(obj)
    return [{"file_name": str(image_root / img["file_name"]), "height": img["height"], "width": img["width"],
             "image_id": img["id"], "annotations": by_image.get(img["id"], [])} for img in data["images"]]


# ------------------------------------------------------------------------------------- common


def load_dataset(source: DatasetSource, class_names: list[str] | None = None) -> list[dict]:
    """Detectron2 dicts of a ``voc:`` or ``coco:`` source."""
    if source.kind == "voc":
        return load_voc_folder(source.path, source.split, class_names or voc_class_names(source.path))
    if source.image_root is None:
        check_present(source)
    return load_coco_json(source.path, source.image_root)


def missing_images(dicts: list[dict], limit: int = 3) -> tuple[int, list[str]]:
    """How many image files of a data set are absent, and the first few of them."""
    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    return len(missing), missing[:limit]
