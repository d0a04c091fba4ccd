"""Detection transfer with Detectron2 installed (skipped, with the reason, where it is not).

The fast tests check the configs, the head, registration and the evaluators without training. The
slow ones fine-tune R50-C4 on the CPU for a few iterations on the shapes detection data, from a
converted random-init torchvision ResNet-50 (about 7-40 s per iteration depending on the machine).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from simsiam_eval.config import flatten_values
from simsiam_eval.data.shapes import CLASSES
from transfer.configs import config_dir, config_value, read_config_tree
from transfer.trials import flatten_results

pytestmark = pytest.mark.detectron2
REPO = Path(__file__).resolve().parent.parent

SMOKE_VOC = "smoke/faster_rcnn_shapes_voc.yaml"
SMOKE_COCO = "smoke/mask_rcnn_shapes_coco.yaml"
SHORT = ["SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2"]
HEADS = ("proposal_generator.", "roi_heads.box_predictor.", "roi_heads.mask_head.", "roi_heads.res5.norm.")


@pytest.fixture
def registered(data_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))
    from transfer.register import register_dataset

    def register(name: str) -> str:
        register_dataset(name)
        return name

    return register


# ------------------------------------------------------------------------------ without training


def test_every_config_loads_in_detectron2_with_the_values_read_without_it():
    from transfer.trainer import build_config

    for path in sorted(config_dir().rglob("*.yaml")):
        cfg = build_config(str(path), [])
        ours = read_config_tree(path)
        for key in ("SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.IMS_PER_BATCH", "INPUT.MIN_SIZE_TRAIN",
                    "MODEL.PIXEL_MEAN", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.ROI_HEADS.NAME", "MODEL.RESNETS.NORM"):
            value = config_value(ours, key)
            if value is not None:
                got = cfg
                for part in key.split("."):
                    got = got[part]
                assert (list(got) if isinstance(got, (list, tuple)) else got) == \
                       (list(value) if isinstance(value, (list, tuple)) else value), (path, key)


def test_extra_norm_head_is_registered_and_built():
    from detectron2.layers import NaiveSyncBatchNorm
    from detectron2.modeling import build_model

    from transfer.roi_heads import Res5ROIHeadsExtraNorm
    from transfer.trainer import build_config

    cfg = build_config(str(config_dir() / SMOKE_VOC), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert isinstance(model.roi_heads, Res5ROIHeadsExtraNorm)
    assert isinstance(model.roi_heads.res5.norm, NaiveSyncBatchNorm)
    assert model.roi_heads.res5.norm.num_features == 2048


# CI guards of tools/parity/moco_detection.py, parts 2 and 3. MoCo's detection/configs (87e36d3) written
# out as the values each file sets over Detectron2's defaults.
MOCO_BASE_RCNN_C4_BN = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000, "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.NORM": "naiveSyncBN", "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02,
}
MOCO_VOC_24K = {
    "MODEL.MASK_ON": False, "MODEL.ROI_HEADS.NUM_CLASSES": 20, "INPUT.MIN_SIZE_TRAIN": tuple(range(480, 801, 32)),
    "INPUT.MIN_SIZE_TEST": 800, "DATASETS.TRAIN": ("voc_2007_trainval", "voc_2012_trainval"),
    "DATASETS.TEST": ("voc_2007_test",), "SOLVER.STEPS": (18000, 22000), "SOLVER.MAX_ITER": 24000,
    "SOLVER.WARMUP_ITERS": 100,
}
MOCO_COCO_2X = {
    "MODEL.MASK_ON": True, "INPUT.MIN_SIZE_TRAIN": tuple(range(640, 801, 32)), "INPUT.MIN_SIZE_TEST": 800,
    "DATASETS.TRAIN": ("coco_2017_train",), "DATASETS.TEST": ("coco_2017_val",),
    "SOLVER.STEPS": (120000, 160000), "SOLVER.MAX_ITER": 180000,
}
MOCO_TORCHVISION_INPUTS = {  # the *_moco.yaml files
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530], "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "MODEL.RESNETS.STRIDE_IN_1X1": False, "INPUT.FORMAT": "RGB",
}
NOT_COMPARED = {"MODEL.WEIGHTS", "MODEL.DEVICE", "MODEL.RESNETS.STEM_TYPE"}  # placeholder, machine, ours only


@pytest.mark.parametrize("ours, recipe", [("pascal_voc0712_R_50_C4.yaml", MOCO_VOC_24K),
                                          ("coco_R_50_C4_2x.yaml", MOCO_COCO_2X)])
def test_recipe_resolves_to_mocos_config_key_by_key(ours, recipe):
    from detectron2.config import get_cfg

    from transfer.trainer import build_config

    theirs = get_cfg()
    theirs.merge_from_list([part for item in {**MOCO_BASE_RCNN_C4_BN, **recipe, **MOCO_TORCHVISION_INPUTS}.items()
                            for part in item])
    mine, theirs = flatten_values(build_config(str(config_dir() / ours), [])), flatten_values(theirs)
    assert set(mine) - NOT_COMPARED == set(theirs) - NOT_COMPARED
    assert {k: mine[k] for k in mine if k not in NOT_COMPARED and mine[k] != theirs[k]} == {}


def test_extra_norm_head_equals_mocos():
    """MoCo's Res5ROIHeadsExtraNorm, re-stated: Detectron2's Res5ROIHeads with get_norm(MODEL.RESNETS.NORM,
    res5's output channels) added to res5 as ``norm``. Built from the same seed: the same tensors; on the
    same batch and seed: the same losses."""
    import torch
    from detectron2.layers import get_norm
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from transfer.trainer import build_config

    def build(head: str):
        cfg = build_config(str(config_dir() / SMOKE_VOC), ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NAME", head])
        torch.manual_seed(0)
        return build_model(cfg), cfg

    ours, _ = build("Res5ROIHeadsExtraNorm")
    reference, cfg = build("Res5ROIHeads")
    res5 = reference.roi_heads.res5
    res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, res5[-1].out_channels))
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ours.state_dict().items())

    generator = torch.Generator().manual_seed(1)
    batch = []
    for boxes, classes in (([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]], [0, 3]),
                           ([[30.0, 30.0, 100.0, 110.0]], [5])):
        instances = Instances((128, 128), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(classes))
        batch.append({"image": torch.rand(3, 128, 128, generator=generator) * 255, "instances": instances})
    losses = []
    for model in (ours, reference):
        torch.manual_seed(2)  # RPN and RoI sampling
        with EventStorage():  # the heads log their sampling statistics
            losses.append({k: v.item() for k, v in model.train()(batch).items()})
    assert losses[0] == losses[1] and set(losses[0]) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}


def test_registration_of_voc_and_coco_specs(registered):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    voc = registered("voc:shapes/voc@val")
    coco = registered("coco:shapes/coco/annotations/instances_val.json")
    assert MetadataCatalog.get(voc).thing_classes == list(CLASSES)
    assert MetadataCatalog.get(coco).thing_classes == list(CLASSES)
    assert MetadataCatalog.get(coco).thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(6)}
    voc_dicts, coco_dicts = DatasetCatalog.get(voc), DatasetCatalog.get(coco)
    assert len(voc_dicts) == len(coco_dicts) == 3
    assert voc_dicts[0]["annotations"][0]["bbox_mode"] is BoxMode.XYXY_ABS
    assert coco_dicts[0]["annotations"][0]["bbox_mode"] is BoxMode.XYWH_ABS
    assert [MetadataCatalog.get(n).evaluator_type for n in (voc, coco)] == ["pascal_voc_folder", "coco"]


def test_a_spec_registered_under_another_data_root_is_registered_again(registered, data_root, tmp_path,
                                                                        monkeypatch):
    """One process, two data roots (two transfer jobs of a suite, or tests): a relative ``voc:`` name
    reads the files of the current root, not those of the first registration."""
    from detectron2.data import DatasetCatalog

    shutil.copytree(data_root / "shapes", tmp_path / "shapes")
    split = tmp_path / "shapes" / "voc" / "ImageSets" / "Main" / "val.txt"
    split.write_text(split.read_text().splitlines()[0] + "\n")  # one image instead of three
    name = registered("voc:shapes/voc@val")
    assert len(DatasetCatalog.get(name)) == 3
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert len(DatasetCatalog.get(registered(name))) == 1
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))
    assert len(DatasetCatalog.get(registered(name))) == 3


def fake_detections(ground_truth, classes, seed=0):
    """Per class: every object found with jitter and a random score, plus random false positives."""
    rng = np.random.default_rng(seed)
    detections = {name: [] for name in classes}
    for image, objects in ground_truth.items():
        for obj in objects:
            box = np.asarray(obj.box) + rng.normal(0, 3, 4)
            detections[obj.name].append((image, float(rng.uniform(0.3, 1)), [float(v) for v in box]))
        for _ in range(3):
            x, y = rng.uniform(1, 60, 2)
            detections[classes[rng.integers(len(classes))]].append((image, float(rng.uniform(0, 1)), [x, y, x + 30, y + 30]))
    return detections


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_voc_metric_equals_detectron2_voc_eval(data_root, tmp_path, use_07_metric):
    from detectron2.evaluation.pascal_voc_evaluation import voc_eval

    from transfer.datasets import voc_ground_truth
    from transfer.voc_metric import class_ap

    folder = data_root / "shapes" / "voc"
    ground_truth = voc_ground_truth(folder, "val")
    detections = fake_detections(ground_truth, CLASSES)
    compared = 0
    for name in CLASSES:
        (tmp_path / f"{name}.txt").write_text("\n".join(
            f"{image} {score:.3f} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}" for image, score, b in detections[name]))
        rounded = [(image, round(score, 3), [round(v, 1) for v in b]) for image, score, b in detections[name]]
        gt = {image: [(o.box, o.difficult) for o in objs if o.name == name] for image, objs in ground_truth.items()}
        if not any(gt.values()):
            continue
        for threshold in (0.5, 0.75):
            _, _, expected = voc_eval(str(tmp_path / "{}.txt"), str(folder / "Annotations" / "{}.xml"),
                                      str(folder / "ImageSets" / "Main" / "val.txt"), name, threshold, use_07_metric)
            assert class_ap(rounded, gt, threshold, use_07_metric) == pytest.approx(expected, abs=1e-12)
            compared += 1
    assert compared >= 4


def perfect_predictions(dicts, image_size=96):
    """Detectron2 outputs that repeat the ground truth (boxes, classes, masks) with score 0.9."""
    import torch
    from detectron2.data import detection_utils
    from detectron2.structures import Boxes, BoxMode, Instances

    for record in dicts:
        annotations = [dict(a, bbox_mode=BoxMode(a["bbox_mode"])) for a in record["annotations"]]
        gt = detection_utils.annotations_to_instances(annotations, (image_size, image_size), mask_format="bitmask")
        instances = Instances((image_size, image_size))
        instances.pred_boxes = Boxes(gt.gt_boxes.tensor)
        instances.scores = torch.full((len(gt),), 0.9)
        instances.pred_classes = gt.gt_classes
        instances.pred_masks = gt.gt_masks.tensor
        yield {"image_id": record["image_id"]}, {"instances": instances}


def test_coco_evaluator_counts_matches_to_annotation_id_0(data_root, tmp_path, registered):
    """pycocotools treats a match to annotation id 0 as no match; ids from 0 must still give AP 100."""
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator

    from transfer.evaluators import COCOEvaluatorAnyIds

    coco = data_root / "shapes" / "coco"
    data = json.loads((coco / "annotations" / "instances_val.json").read_text())
    for ann in data["annotations"]:
        ann["id"] -= 1
    zero_based = tmp_path / "instances_val0.json"
    zero_based.write_text(json.dumps(data))
    name = registered(f"coco:{zero_based}@{coco / 'images' / 'val'}")
    predictions = list(perfect_predictions(DatasetCatalog.get(name)))

    def evaluate(evaluator_class):
        evaluator = evaluator_class(name, tasks=("bbox", "segm"), distributed=False, output_dir=str(tmp_path / "out"))
        evaluator.reset()
        for inputs, outputs in predictions:
            evaluator.process([inputs], [outputs])
        return evaluator.evaluate()

    ours = evaluate(COCOEvaluatorAnyIds)
    assert ours["bbox"]["AP"] == pytest.approx(100.0) and ours["segm"]["AP50"] == pytest.approx(100.0)
    assert evaluate(COCOEvaluator)["bbox"]["AP"] < 100.0  # what the renumbering prevents


# -------------------------------------------------------------------------------- fine-tuning


def transfer_args(data_root: Path, output: Path, task: str, *extra: str) -> list[str]:
    return ["transfer", "--checkpoint", "random:resnet50", "--task", task, "--data-root", str(data_root),
            "--output-dir", str(output), "--quiet", *extra]


def not_found_block(log: str) -> list[str]:
    """The names Detectron2 lists as 'not found in the checkpoint' when it loads the weights."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "not found in the checkpoint" in line)
    block = []
    for line in lines[start + 1:]:
        if line.startswith("["):
            break
        block.append(line.strip())
    return block


def assert_backbone_fully_loaded(log: str, heads: tuple[str, ...]) -> None:
    block = not_found_block(log)
    assert block and all(line.startswith(heads) for line in block), block
    assert {h for h in heads if any(line.startswith(h) for line in block)} == set(heads)
    assert "not used by the model" not in log
    assert "265/265 backbone tensors loaded from the checkpoint" in log


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_faster_rcnn_voc_smoke_killed_and_resumed(data_root, tmp_path, capsys):
    from simsiam_eval.cli import main
    from simsiam_eval.results.store import read_records

    output = tmp_path / "run"
    args = transfer_args(data_root, output, SMOKE_VOC, "--trials", "2", *SHORT)
    # first run: killed (with its trainer) once trial 2 has written a checkpoint
    process = subprocess.Popen([sys.executable, "-m", "simsiam_eval", *args], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 3000
    while not (output / "trial2" / "last_checkpoint").is_file():
        assert process.poll() is None, "the run ended before trial 2 wrote a checkpoint"
        assert time.time() < deadline
        time.sleep(2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (output / "trial1" / "record.json").is_file() and not (output / "trial2" / "final_results.json").exists()

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trial 1 (seed 0): finished earlier, skipped" in printed
    assert "trial 2 (seed 1): training" in printed
    trial1_log = (output / "trial1" / "log.txt").read_text()
    trial2_log = (output / "trial2" / "log.txt").read_text()
    assert trial1_log.count("Starting training from iteration 0") == 1
    assert "resumed from" in trial2_log and "Starting training from iteration 2" in trial2_log
    assert_backbone_fully_loaded(trial1_log, ("proposal_generator.", "roi_heads.box_predictor.", "roi_heads.res5.norm."))

    records = [read_json(output / f"trial{i}" / "record.json") for i in (1, 2)]
    for index, record in enumerate(records, start=1):
        assert record["protocol"] == "transfer" and (record["trial"], record["seed"]) == (index, index - 1)
        assert set(record["metrics"]) == {"AP", "AP50", "AP75"}
        assert record["checkpoint"]["arch"] == "resnet50" and record["settings"]["max_iter"] == 4
    aggregate = read_json(output / "aggregate.json")
    assert aggregate["protocol"] == "transfer-aggregate"
    assert set(aggregate["metrics"]) == {"AP", "AP50", "AP75", "AP_std", "AP50_std", "AP75_std"}
    assert aggregate["metrics"]["AP50"] == pytest.approx(np.mean([r["metrics"]["AP50"] for r in records]))
    assert aggregate["metrics"]["AP50_std"] == pytest.approx(np.std([r["metrics"]["AP50"] for r in records], ddof=1))
    assert "AP50" in printed and "± " in printed
    assert sorted(r["protocol"] for r in read_records(output / "results.db")) == [
        "transfer", "transfer", "transfer-aggregate"]

    assert main(args) == 0  # everything finished: nothing trains, nothing is stored twice
    assert printed.count("skipped") + capsys.readouterr().out.count("skipped") == 3
    assert len(read_records(output / "results.db")) == 3

    # tools/train_net.py, Detectron2's command line for the same trainer: trial 1's model, evaluated again
    evaluation = tmp_path / "eval"
    subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
                    str(output / "trial1" / "config.yaml"), "--eval-only", "MODEL.WEIGHTS",
                    str(output / "trial1" / "model_final.pth"), "OUTPUT_DIR", str(evaluation)],
                   check=True, capture_output=True, env=dict(os.environ, DETECTRON2_DATASETS=str(data_root)))
    again = flatten_results(read_json(evaluation / "final_results.json")["results"])
    assert again == pytest.approx(records[0]["metrics"])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_mask_rcnn_coco_smoke(data_root, tmp_path):
    from simsiam_eval.cli import main

    output = tmp_path / "run"
    assert main(transfer_args(data_root, output, SMOKE_COCO, "--trials", "1", "--tag", "smoke",
                              "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)")) == 0
    record = read_json(output / "trial1" / "record.json")
    assert {"AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75"} <= set(record["metrics"])
    assert record["settings"]["model"] == "Mask R-CNN R50-C4" and record["tags"] == ["smoke"]
    aggregate = read_json(output / "aggregate.json")
    assert aggregate["metrics"]["mask_AP"] == record["metrics"]["mask_AP"] and "mask_AP_std" not in aggregate["metrics"]
    assert_backbone_fully_loaded((output / "trial1" / "log.txt").read_text(), HEADS)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_two_cpu_processes_with_gloo(data_root, tmp_path):
    from simsiam_eval.cli import main

    output = tmp_path / "run"
    assert main(transfer_args(data_root, output, SMOKE_VOC, "--trials", "1", "--num-gpus", "2",
                              "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)")) == 0
    log = (output / "trial1" / "log.txt").read_text()
    assert "World size: 2" in log
    assert set(read_json(output / "trial1" / "record.json")["metrics"]) == {"AP", "AP50", "AP75"}
