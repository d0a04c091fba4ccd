"""A corpus of damaged and hostile input files, each with the commands that read it and the one-line
message it must get (tests/test_bad_inputs.py runs them all).

``python tests/bad_inputs.py`` prints the README's table (file, command, message) from a fresh run.
Hostile files carry a payload that would create ``PAYLOAD_MARKER`` in the case's folder: a test proves
it never ran.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import pickle
import re
import struct
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import torch
from PIL import Image

PAYLOAD_MARKER = "PAYLOAD_RAN"
TINY_CHECKPOINT = "random:resnet18:cifar:16"  # a network that builds in milliseconds
DETECTRON2_TASK = "smoke/faster_rcnn_shapes_voc_r18_cifar.yaml"
COCO_TASK = "smoke/mask_rcnn_shapes_coco.yaml"


class Payload:
    """Unpickling calls ``os.system`` to create the marker file: must never happen."""

    def __init__(self, folder: Path) -> None:
        self.command = f"touch {folder / PAYLOAD_MARKER}"

    def __reduce__(self):
        return os.system, (self.command,)


# ------------------------------------------------------------------------------------ checkpoints


def simsiam_state() -> dict:
    """A SimSiam-layout training checkpoint of the tiny network (what ``pretrain`` writes)."""
    from simsiam_eval.checkpoints import read_checkpoint

    backbone = read_checkpoint(TINY_CHECKPOINT).state_dict
    return {"epoch": 1, "arch": "resnet18", "state_dict": {f"module.encoder.{k}": v for k, v in backbone.items()},
            "optimizer": {"state": {}, "param_groups": []}}


def zero_byte(folder: Path) -> Path:
    path = folder / "empty.pth.tar"
    path.write_bytes(b"")
    return path


def truncated_zip(folder: Path) -> Path:
    path = folder / "truncated.pth.tar"
    torch.save(simsiam_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def bit_flipped_zip(folder: Path) -> Path:
    """One bit flipped inside the largest tensor record: torch.load itself reads it without complaint."""
    path = folder / "bitflip.pth.tar"
    torch.save(simsiam_state(), path)
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    (name_len, extra_len) = struct.unpack("<HH", data[record.header_offset + 26: record.header_offset + 30])
    data[record.header_offset + 30 + name_len + extra_len + record.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))
    return path


def truncated_legacy(folder: Path) -> Path:
    path = folder / "truncated_legacy.pth"
    torch.save(simsiam_state(), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def pth_with_code(folder: Path) -> Path:
    path = folder / "hostile.pth"
    torch.save({"state_dict": simsiam_state()["state_dict"], "hook": Payload(folder)}, path)
    return path


def legacy_pth_with_code(folder: Path) -> Path:
    path = folder / "hostile_legacy.pth"
    torch.save({"hook": Payload(folder)}, path, _use_new_zipfile_serialization=False)
    return path


def pkl_with_code(folder: Path) -> Path:
    path = folder / "hostile.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "__author__": Payload(folder)}, protocol=2))
    return path


def truncated_pkl(folder: Path) -> Path:
    """A Detectron2-style weights pickle cut in half."""
    path = folder / "truncated.pkl"
    state = simsiam_state()["state_dict"]
    blob = pickle.dumps({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, protocol=2)
    path.write_bytes(blob[: len(blob) // 2])
    return path


def truncated_safetensors(folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / "truncated.safetensors"
    save_file({k: v.contiguous() for k, v in simsiam_state()["state_dict"].items()}, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def lying_safetensors(folder: Path) -> Path:
    """A header that promises more tensor bytes than the file holds."""
    header = json.dumps({"conv1.weight": {"dtype": "F32", "shape": [16, 3, 3, 3], "data_offsets": [0, 1728]}})
    path = folder / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64)
    return path


def other_width(folder: Path) -> Path:
    """A valid checkpoint of ResNet-18 at width 64, where the config builds width 16."""
    from simsiam_eval.checkpoints import read_checkpoint

    path = folder / "resnet18_w64.pth"
    torch.save(read_checkpoint("random:resnet18:cifar").state_dict, path)
    return path


def other_arch(folder: Path) -> Path:
    path = folder / "resnet18.pth"
    torch.save(simsiam_state(), path)
    return path


# ------------------------------------------------------------------------------------------ images


def image_folder(folder: Path) -> Path:
    """A valid ImageFolder: 2 classes x 4 images of 16 px."""
    root = folder / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def corrupt_image(folder: Path) -> Path:
    path = image_folder(folder) / "a" / "corrupt.png"
    path.write_bytes(bytes(np.random.default_rng(1).integers(0, 255, 400, dtype=np.uint8)))
    return path


def truncated_image(folder: Path) -> Path:
    path = image_folder(folder) / "a" / "truncated.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    return path


def zero_size_image(folder: Path) -> Path:
    """A PNG whose header declares 0 x 0 pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path = image_folder(folder) / "a" / "empty.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def text_named_as_image(folder: Path) -> Path:
    path = image_folder(folder) / "b" / "notes.jpg"
    path.write_text("not an image\n")
    return path


def cifar_with_code(folder: Path) -> Path:
    root = folder / "cifar-10-batches-py"
    root.mkdir()
    batch = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2))
    (root / "data_batch_1").write_bytes(pickle.dumps(dict(batch, note=Payload(folder)), protocol=2))
    return root / "data_batch_1"


def truncated_idx(folder: Path) -> Path:
    """MNIST IDX files whose image file holds fewer bytes than its header declares."""
    root = folder / "mnist"
    root.mkdir()
    for prefix, count in (("train", 20), ("t10k", 10)):
        header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + bytes(28 * 28 * count))
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + count.to_bytes(4, "big") + bytes(count))
    path = root / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (20, 28, 28)) + bytes(28 * 28 * 7))
    return path


# ------------------------------------------------------------------------------- detection data


def detection_data(folder: Path) -> Path:
    """The shapes detection scenes in VOC and COCO layout under folder/data/shapes."""
    from simsiam_eval.data.shapes import CLASSES, ShapesSettings, write_shapes_dataset

    settings = ShapesSettings(train_per_class=1, val_per_class=1, image_size=16,
                              detection_train=4, detection_val=2, detection_size=96)
    write_shapes_dataset(folder / "data" / "shapes", settings)
    (folder / "data" / "shapes" / "voc" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return folder / "data" / "shapes"


def _first_voc_xml(folder: Path) -> Path:
    voc = detection_data(folder) / "voc"
    first = (voc / "ImageSets" / "Main" / "train.txt").read_text().split()[0]
    return voc / "Annotations" / f"{first}.xml"


def _edit_box(xml: Path, edit: Callable[[dict[str, str]], dict[str, str]]) -> None:
    text = xml.read_text()
    box = dict(re.findall(r"<(xmin|ymin|xmax|ymax)>([^<]*)<", text))
    for tag, value in edit(box).items():
        text = re.sub(rf"<{tag}>[^<]*<", f"<{tag}>{value}<", text, count=1)
    xml.write_text(text)


def malformed_voc(folder: Path) -> Path:
    xml = _first_voc_xml(folder)
    xml.write_text(xml.read_text()[:-40])
    return xml


def voc_box_outside(folder: Path) -> Path:
    xml = _first_voc_xml(folder)
    _edit_box(xml, lambda box: {"xmin": "150", "xmax": "190"})
    return xml


def voc_box_reversed(folder: Path) -> Path:
    xml = _first_voc_xml(folder)
    _edit_box(xml, lambda box: {"xmin": box["xmax"], "xmax": box["xmin"]})
    return xml


def _coco_json(folder: Path) -> Path:
    root = detection_data(folder) / "coco"
    return next(root.rglob("*train*.json"))


def _edit_json(path: Path, edit: Callable[[dict], None]) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def coco_missing_key(folder: Path) -> Path:
    return _edit_json(_coco_json(folder), lambda data: data["annotations"][0].pop("bbox"))


def coco_unknown_category(folder: Path) -> Path:
    return _edit_json(_coco_json(folder), lambda data: data["annotations"][0].update(category_id=999))


def coco_empty_segmentation(folder: Path) -> Path:
    return _edit_json(_coco_json(folder), lambda data: data["annotations"][0].update(segmentation=[]))


# -------------------------------------------------------------------------------------- commands


def knn(folder: Path, checkpoint: str = TINY_CHECKPOINT, data: str | None = None,
        flags: tuple[str, ...] = ()) -> list[str]:
    data = data or str(image_folder(folder))
    return ["knn", "--checkpoint", checkpoint, "--train", data, "--val", data, "--image-size", "16",
            "--workers", "0", "--no-progress", *output_flags(folder), *flags]


def linear(folder: Path, checkpoint: str = TINY_CHECKPOINT, data: str | None = None,
           flags: tuple[str, ...] = ()) -> list[str]:
    return ["linear", *knn(folder, checkpoint, data, flags)[1:], "--epochs", "1", "--batch-size", "4"]


def pretrain(folder: Path, data: str) -> list[str]:
    return ["pretrain", "pretrain/shapes_cpu", f"data.train={data}", f"output_dir={folder / 'out'}", "epochs=1",
            "batch_size=4", "workers=0", "progress=false", "tensorboard=false", "data.image_size=16"]


def transfer(folder: Path, checkpoint: str = TINY_CHECKPOINT, data_root: str | None = None,
             task: str = DETECTRON2_TASK) -> list[str]:
    data_root = data_root or str(detection_data(folder).parent)
    return ["transfer", "--checkpoint", checkpoint, "--task", task, "--data-root", data_root,
            "--output-dir", str(folder / "out"), "--trials", "1", "--quiet", "SOLVER.MAX_ITER", "1"]


def image_root(file: Path) -> str:
    """The ImageFolder a bad image was written into (root/<class>/<image>)."""
    return str(file.parent.parent)


def detection_root(file: Path) -> str:
    """The transfer data root an annotation file was written under (ROOT/shapes/{voc,coco}/DIR/FILE)."""
    return str(file.parents[3])


def output_flags(folder: Path) -> tuple[str, ...]:
    return "--output-dir", str(folder / "out"), "--cache-dir", str(folder / "out" / "cache")


# ---------------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class BadInput:
    """One damaged file, how to make it, and what the message must say about it."""

    name: str
    make: Callable[[Path], Path]
    problem: str  # a regex of the problem, matched in the one-line message
    commands: tuple[str, ...]
    hostile: bool = False
    data: Callable[[Path], str] | None = None  # a data file: the spec of its data set; None: a checkpoint
    flags: tuple[str, ...] = ()  # extra flags of the checkpoint commands


COMMAND_NAMES = {"transfer-coco": "transfer", "pretrain-resume": "pretrain resume=FILE"}
IMAGE_COMMANDS = ("knn", "linear", "pretrain")
CHECKPOINT_COMMANDS = ("convert", "knn", "linear", "transfer")
CORPUS = [
    BadInput("zero-byte checkpoint", zero_byte, "empty file", CHECKPOINT_COMMANDS + ("pretrain-resume",)),
    BadInput("truncated checkpoint (zip)", truncated_zip, "truncated", CHECKPOINT_COMMANDS + ("pretrain-resume",)),
    BadInput("bit-flipped checkpoint (zip)", bit_flipped_zip, "CRC-32", CHECKPOINT_COMMANDS + ("pretrain-resume",)),
    BadInput("truncated checkpoint (legacy pickle)", truncated_legacy, "truncated", CHECKPOINT_COMMANDS),
    BadInput(".pth whose pickle calls os.system", pth_with_code, r"carries code \(posix\.system\)",
             CHECKPOINT_COMMANDS, hostile=True),
    BadInput("legacy .pth whose pickle calls os.system", legacy_pth_with_code, r"carries code \(posix\.system\)",
             CHECKPOINT_COMMANDS, hostile=True),
    BadInput(".pkl with a __reduce__ payload", pkl_with_code, "carries code", CHECKPOINT_COMMANDS, hostile=True),
    BadInput("truncated Detectron2 .pkl", truncated_pkl, "truncated", CHECKPOINT_COMMANDS),
    BadInput("truncated safetensors", truncated_safetensors, "safetensors", CHECKPOINT_COMMANDS),
    BadInput("safetensors with a lying header", lying_safetensors, "safetensors", CHECKPOINT_COMMANDS),
    BadInput("checkpoint of another width", other_width, "width 64", ("transfer",)),
    BadInput("checkpoint of another architecture", other_arch, "holds a resnet18 backbone, but resnet50",
             ("convert", "knn", "linear"), flags=("--arch", "resnet50")),
    BadInput("corrupt image", corrupt_image, "corrupt or unreadable image", IMAGE_COMMANDS, data=image_root),
    BadInput("truncated image", truncated_image, "corrupt or unreadable image", IMAGE_COMMANDS, data=image_root),
    BadInput("0x0 image", zero_size_image, "corrupt or unreadable image", IMAGE_COMMANDS, data=image_root),
    BadInput("text file named .jpg in an ImageFolder", text_named_as_image, "corrupt or unreadable image",
             IMAGE_COMMANDS, data=image_root),
    BadInput("CIFAR batch carrying code", cifar_with_code, "carries code", ("knn", "pretrain"), hostile=True,
             data=lambda file: f"cifar10:{file.parent}"),
    BadInput("truncated MNIST IDX file", truncated_idx, "truncated", ("knn", "pretrain"),
             data=lambda file: f"mnist:{file.parent}"),
    BadInput("malformed VOC xml", malformed_voc, "not a readable VOC annotation", ("transfer",),
             data=detection_root),
    BadInput("VOC box outside the image", voc_box_outside, "outside the", ("transfer",), data=detection_root),
    BadInput("VOC box with xmax < xmin", voc_box_reversed, "xmax .* < xmin", ("transfer",), data=detection_root),
    BadInput("COCO json with a missing key", coco_missing_key, "lacks 'bbox'", ("transfer-coco",),
             data=detection_root),
    BadInput("COCO json with an unknown category id", coco_unknown_category, "category_id 999",
             ("transfer-coco",), data=detection_root),
    BadInput("COCO json with an empty segmentation", coco_empty_segmentation, "empty segmentation",
             ("transfer-coco",), data=detection_root),
]


def argv_for(case: BadInput, command: str, folder: Path) -> tuple[Path, list[str]]:
    """Write the case's file into ``folder``; (the file, the command line that reads it)."""
    file = case.make(folder)
    return file, _argv(case, command, file, folder)


def _argv(case: BadInput, command: str, file: Path, folder: Path) -> list[str]:
    if case.data is not None:  # the file is part of a data set
        if command.startswith("transfer"):
            task = COCO_TASK if command == "transfer-coco" else DETECTRON2_TASK
            return transfer(folder, data_root=case.data(file), task=task)
        return pretrain(folder, case.data(file)) if command == "pretrain" else \
            {"knn": knn, "linear": linear}[command](folder, data=case.data(file))
    if command == "convert":
        return ["convert", str(file), str(folder / "out" / "converted.pth"), *case.flags]
    if command == "pretrain-resume":
        return pretrain(folder, f"shapes:{folder / 'shapes'}") + [f"resume={file}"]
    if command == "transfer":
        return transfer(folder, checkpoint=str(file))
    return {"knn": knn, "linear": linear}[command](folder, checkpoint=str(file), flags=case.flags)


def run_case(case: BadInput, command: str, folder: Path) -> tuple[int, str, Path]:
    """(exit code, stderr, the bad file) of one command on one bad file, run in this process."""
    from simsiam_eval.cli import main

    file, argv = argv_for(case, command, folder)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            mock.patch.dict(os.environ):  # transfer sets DETECTRON2_DATASETS from --data-root
        code = main(argv)
    return code, err.getvalue(), file


def main() -> None:
    """Print one table row per file: the commands that read it and the message they give (the same for all)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    print("| file | commands | message (after `simsiam-eval COMMAND: error:`) |\n|---|---|---|")
    for case in CORPUS:
        rows: dict[str, tuple[str, list[str]]] = {}  # messages that differ only in numbers share a row
        for command in case.commands:
            with tempfile.TemporaryDirectory() as tmp:
                code, err, _ = run_case(case, command, Path(tmp))
            line = err.strip().splitlines()[-1] if err.strip() else f"(exit {code}, no message)"
            message = line.split(": error: ", 1)[-1].replace(tmp + "/", "")
            rows.setdefault(re.sub(r"\d+", "N", message), (message, []))[1].append(COMMAND_NAMES.get(command, command))
        for message, commands in rows.values():
            print(f"| {case.name} | {', '.join(dict.fromkeys(commands))} | {message.replace('|', '/')} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
