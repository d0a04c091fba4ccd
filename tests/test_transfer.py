"""Detection transfer without Detectron2: recipes, data parsing, VOC AP, scaling, trials, pre-flight."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsiam_eval.errors import UserError
from transfer import preflight
from transfer.configs import (
    TASKS,
    config_dir,
    config_value,
    read_config_tree,
    task_config,
)
from transfer.datasets import (
    BOX_MODE_XYWH_ABS,
    BOX_MODE_XYXY_ABS,
    VOC_CLASSES,
    VocObject,
    check_present,
    load_coco_json,
    load_voc_folder,
    parse_dataset_name,
    parse_voc_xml,
    voc_class_names,
)
from transfer.scaling import Schedule, ims_per_device_for_memory, scale_schedule
from transfer.trials import (
    Trial,
    aggregate,
    aggregate_metrics,
    flatten_results,
    format_summary,
    plan_trials,
    run_trials,
)
from transfer.voc_metric import class_ap, voc_metrics
from transfer.weights import check_weights, match_weights

VOC_SIZES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
COCO_SIZES = (640, 672, 704, 736, 768, 800)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# ------------------------------------------------------------------------------------ recipes


def tree(task: str) -> dict:
    return read_config_tree(task_config(task))


@pytest.mark.parametrize("task", list(TASKS) + ["smoke/faster_rcnn_shapes_voc.yaml", "smoke/mask_rcnn_shapes_coco.yaml"])
def test_every_recipe_is_r50_c4_bn_with_torchvision_inputs(task):
    cfg = tree(task)
    expected = {
        "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
        "MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.NORM": "naiveSyncBN", "MODEL.RESNETS.DEPTH": 50,
        "MODEL.RESNETS.STRIDE_IN_1X1": False, "INPUT.FORMAT": "RGB",
        "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530], "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
        "TEST.PRECISE_BN.ENABLED": True,
    }
    for key, value in expected.items():
        assert config_value(cfg, key) == value, key


@pytest.mark.parametrize("task", list(TASKS))
def test_full_recipes_keep_the_paper_batch_and_test_settings(task):
    cfg = tree(task)
    for key, value in {"SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "TEST.PRECISE_BN.NUM_ITER": 200,
                       "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000, "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
                       "INPUT.MIN_SIZE_TEST": 800}.items():
        assert config_value(cfg, key) == value, key


@pytest.mark.parametrize("task, max_iter, steps, warmup, sizes, classes, mask, train, test", [
    ("voc07", 12500, (9500,), 100, VOC_SIZES, 20, False, ("voc_2007_trainval",), ("voc_2007_test",)),
    ("voc0712", 24000, (18000, 22000), 100, VOC_SIZES, 20, False, ("voc_2007_trainval", "voc_2012_trainval"),
     ("voc_2007_test",)),
    ("coco_1x", 90000, (60000, 80000), None, COCO_SIZES, 80, True, ("coco_2017_train",), ("coco_2017_val",)),
    ("coco_2x", 180000, (120000, 160000), None, COCO_SIZES, 80, True, ("coco_2017_train",), ("coco_2017_val",)),
])
def test_recipe_schedules_and_data(task, max_iter, steps, warmup, sizes, classes, mask, train, test):
    cfg = tree(task)
    assert config_value(cfg, "SOLVER.MAX_ITER") == max_iter
    assert config_value(cfg, "SOLVER.STEPS") == steps
    assert config_value(cfg, "SOLVER.WARMUP_ITERS") == warmup  # None: Detectron2's default (1000)
    assert config_value(cfg, "INPUT.MIN_SIZE_TRAIN") == sizes
    assert sizes == tuple(range(sizes[0], 801, 32))
    assert config_value(cfg, "MODEL.ROI_HEADS.NUM_CLASSES") == classes
    assert config_value(cfg, "MODEL.MASK_ON") is mask
    assert config_value(cfg, "DATASETS.TRAIN") == train
    assert config_value(cfg, "DATASETS.TEST") == test


@pytest.mark.parametrize("name", ["faster_rcnn_shapes_voc.yaml", "mask_rcnn_shapes_coco.yaml"])
def test_smoke_configs_are_tiny(name):
    cfg = tree(f"smoke/{name}")
    assert config_value(cfg, "SOLVER.MAX_ITER") == 10
    assert config_value(cfg, "SOLVER.IMS_PER_BATCH") == 2
    assert math.isclose(config_value(cfg, "SOLVER.BASE_LR"), 0.02 * 2 / 16)
    assert config_value(cfg, "INPUT.MIN_SIZE_TRAIN") == (128,)
    assert config_value(cfg, "INPUT.MAX_SIZE_TEST") == 128
    assert config_value(cfg, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE") <= 64
    assert config_value(cfg, "MODEL.ROI_HEADS.NUM_CLASSES") == 6
    assert config_value(cfg, "MODEL.MASK_ON") is name.startswith("mask")


def test_every_yaml_under_configs_detectron2_resolves():
    files = sorted(config_dir().rglob("*.yaml"))
    assert len(files) >= 9
    for path in files:
        assert config_value(read_config_tree(path), "MODEL.RESNETS.NORM") == "naiveSyncBN", path


def test_task_names_paths_and_unknown_tasks(tmp_path):
    assert task_config("voc07").name == "pascal_voc07_R_50_C4.yaml"
    assert task_config("smoke/faster_rcnn_shapes_voc.yaml").is_file()
    own = tmp_path / "mine.yaml"
    own.write_text(f'_BASE_: "{task_config("coco_1x")}"\nSOLVER:\n  MAX_ITER: 7\n')
    assert task_config(str(own)) == own.resolve()
    assert config_value(read_config_tree(own), "SOLVER.STEPS") == (60000, 80000)
    assert config_value(read_config_tree(own), "SOLVER.MAX_ITER") == 7
    with pytest.raises(UserError) as excinfo:
        task_config("voc2007")
    assert "voc07, voc0712, coco_1x, coco_2x" in one_line_error(excinfo)


def test_base_chain_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text('_BASE_: "b.yaml"\n')
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(UserError) as excinfo:
        read_config_tree(tmp_path / "a.yaml")
    assert "loops" in one_line_error(excinfo)


# ------------------------------------------------------------------------------------ VOC data

REAL_WORLD_XML = """<annotation>
  <folder>photos</folder>
  <filename>img1.jpg</filename>
  <size><width></width><height/><depth>3</depth></size>
  <object>
    <name>dog</name><pose>Unspecified</pose><truncated/><difficult/>
    <bndbox><xmin>10.5</xmin><ymin>20.25</ymin><xmax>40.0</xmax><ymax>50.75</ymax></bndbox>
  </object>
  <object>
    <name> cat </name><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>20</ymax></bndbox>
  </object>
</annotation>
"""


def make_voc_folder(root: Path, xml: str = REAL_WORLD_XML, classes: str | None = None) -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / "img1.xml").write_text(xml)
    Image.new("RGB", (64, 48)).save(root / "JPEGImages" / "img1.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("img1\n\n")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def test_voc_xml_with_empty_tags_and_float_coordinates(tmp_path):
    width, height, filename, objects = parse_voc_xml(make_voc_folder(tmp_path) / "Annotations" / "img1.xml")
    assert (width, height, filename) == (None, None, "img1.jpg")
    assert objects == [VocObject("dog", (10.5, 20.25, 40.0, 50.75), False), VocObject("cat", (1, 2, 30, 20), True)]


def test_voc_folder_to_detectron2_dicts(tmp_path):
    folder = make_voc_folder(tmp_path)
    classes = voc_class_names(folder)
    assert classes == list(VOC_CLASSES)  # every name is a Pascal VOC class: the standard order
    [record] = load_voc_folder(folder, "train", classes)
    assert record["file_name"] == str(folder / "JPEGImages" / "img1.jpg")
    assert (record["image_id"], record["width"], record["height"]) == ("img1", 64, 48)  # size from the image
    dog, cat = record["annotations"]
    assert dog == {"category_id": VOC_CLASSES.index("dog"), "bbox": [9.5, 19.25, 40.0, 50.75],
                   "bbox_mode": BOX_MODE_XYXY_ABS, "difficult": False}
    assert cat["category_id"] == VOC_CLASSES.index("cat") and cat["difficult"] is True


def test_voc_class_names_from_file_or_sorted(tmp_path):
    xml = REAL_WORLD_XML.replace("<name>dog</name>", "<name>zebra</name>")
    assert voc_class_names(make_voc_folder(tmp_path / "a", xml)) == ["cat", "zebra"]
    assert voc_class_names(make_voc_folder(tmp_path / "b", xml, classes="zebra\ncat\nyak\n")) == ["zebra", "cat", "yak"]


def test_voc_unknown_class_and_bad_number_are_one_line_errors(tmp_path):
    folder = make_voc_folder(tmp_path / "a")
    with pytest.raises(UserError) as excinfo:
        load_voc_folder(folder, "train", ["dog"])
    assert "class 'cat'" in one_line_error(excinfo)
    folder = make_voc_folder(tmp_path / "b", REAL_WORLD_XML.replace("10.5", "ten"))
    with pytest.raises(UserError) as excinfo:
        parse_voc_xml(folder / "Annotations" / "img1.xml")
    assert "<xmin> holds 'ten'" in one_line_error(excinfo)


def test_shapes_voc_and_coco_layouts_agree(shapes_root):
    voc = parse_dataset_name(f"voc:{shapes_root}/voc@train")
    coco = parse_dataset_name(f"coco:{shapes_root}/coco/annotations/instances_train.json")
    assert coco.image_root == shapes_root / "coco" / "images" / "train"  # found by the default rule
    classes = sorted({o.name for xml in (voc.path / "Annotations").glob("train_*.xml") for o in parse_voc_xml(xml)[3]})
    voc_dicts = load_voc_folder(voc.path, "train", classes)
    coco_dicts = load_coco_json(coco.path, coco.image_root)
    assert len(voc_dicts) == len(coco_dicts) > 0
    for v, c in zip(voc_dicts, coco_dicts):
        assert Path(v["file_name"]).name == Path(c["file_name"]).name and Path(c["file_name"]).is_file()
        assert len(v["annotations"]) == len(c["annotations"])
        for a, b in zip(v["annotations"], c["annotations"]):
            x, y, w, h = b["bbox"]
            assert np.allclose(a["bbox"], [x, y, x + w, y + h], atol=1.5)  # VOC stores rounded pixels
            assert b["bbox_mode"] == BOX_MODE_XYWH_ABS and len(b["segmentation"][0]) >= 6


# ----------------------------------------------------------------------------------- COCO data


def test_coco_json_with_ids_from_zero(tmp_path):
    (tmp_path / "images").mkdir()
    data = {
        "images": [{"id": 0, "file_name": "a.jpg", "width": 20, "height": 10},
                   {"id": 1, "file_name": "b.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 0, "name": "zero"}, {"id": 2, "name": "two"}, {"id": 1, "name": "one"}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 0, "bbox": [1, 2, 3, 4], "iscrowd": 0,
             "segmentation": [[1, 2, 4, 2, 4, 6, 1, 6], [1, 2]]},
            {"id": 1, "image_id": 0, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 0,
             "segmentation": [[0, 0, 1]]},      # no usable polygon: left out, as Detectron2 does
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 2, 2, 2], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [2, 2, 2, 2], "ignore": 1},
        ],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    source = parse_dataset_name(f"coco:{path}")
    assert source.image_root == tmp_path / "images"
    first, second = load_coco_json(source.path, source.image_root)
    assert (first["image_id"], first["file_name"]) == (0, str(tmp_path / "images" / "a.jpg"))
    assert first["annotations"] == [{"bbox": [1.0, 2.0, 3.0, 4.0], "bbox_mode": BOX_MODE_XYWH_ABS, "category_id": 0,
                                     "iscrowd": 0, "segmentation": [[1, 2, 4, 2, 4, 6, 1, 6]]}]
    assert second["annotations"] == [{"bbox": [2.0, 2.0, 2.0, 2.0], "bbox_mode": BOX_MODE_XYWH_ABS,
                                      "category_id": 1, "iscrowd": 1}]


def test_coco_category_not_listed_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 1, "height": 1}],
                                "categories": [{"id": 1, "name": "a"}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(UserError) as excinfo:
        load_coco_json(path, tmp_path)
    assert "category_id 7" in one_line_error(excinfo)


# --------------------------------------------------------------------------------- dataset specs


def test_dataset_specs_and_standard_names(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    voc = parse_dataset_name("voc_2007_test")
    assert (voc.kind, voc.path, voc.split, voc.year, voc.builtin) == ("voc", tmp_path / "VOC2007", "test", 2007, True)
    coco = parse_dataset_name("coco_2017_train")
    assert coco.path == tmp_path / "coco/annotations/instances_train2017.json"
    assert coco.image_root == tmp_path / "coco/train2017"
    mine = parse_dataset_name("voc:my/VOC2007@trainval")
    assert (mine.path, mine.split, mine.year, mine.builtin) == (tmp_path / "my/VOC2007", "trainval", 2007, False)
    assert parse_dataset_name("voc:/abs/folder@val").year == 2012
    explicit = parse_dataset_name("coco:/x/ann.json@/data/imgs")
    assert (explicit.path, explicit.image_root) == (Path("/x/ann.json"), Path("/data/imgs"))
    assert parse_dataset_name("my_registered_set") is None
    for bad in ("voc:folder", "coco:file.txt"):
        with pytest.raises(UserError) as excinfo:
            parse_dataset_name(bad)
        one_line_error(excinfo)


def test_missing_parts_are_listed_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    (tmp_path / "VOC2007" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(UserError) as excinfo:
        check_present(parse_dataset_name("voc_2007_test"))
    message = one_line_error(excinfo)
    assert f"DETECTRON2_DATASETS={tmp_path}" in message
    assert "VOC2007/Annotations/" in message and "ImageSets/Main/test.txt" in message
    assert "JPEGImages" not in message
    with pytest.raises(UserError) as excinfo:
        check_present(parse_dataset_name("coco_2017_val"))
    assert "instances_val2017.json" in one_line_error(excinfo) and "coco/val2017/" in str(excinfo.value)


# ------------------------------------------------------------------------------------- VOC AP


def test_class_ap_against_hand_computed_numbers():
    gt = {"img": [((1, 1, 10, 10), False), ((21, 21, 30, 30), False)], "other": []}
    detections = [("img", 0.9, (1, 1, 10, 10)), ("img", 0.8, (50, 50, 60, 60)), ("img", 0.7, (21, 21, 30, 30))]
    # tp 1 0 1, fp 0 1 0: recall .5 .5 1, precision 1 .5 2/3
    assert math.isclose(class_ap(detections, gt, 0.5, use_07_metric=False), 0.5 * 1 + 0.5 * 2 / 3)
    assert math.isclose(class_ap(detections, gt, 0.5, use_07_metric=True), (6 * 1 + 5 * 2 / 3) / 11)


def test_class_ap_difficult_duplicates_and_thresholds():
    gt = {"img": [((1, 1, 10, 10), False), ((21, 21, 30, 30), True)]}
    detections = [("img", 0.9, (21, 21, 30, 30)),  # on a difficult object: neither tp nor fp
                  ("img", 0.8, (1, 1, 10, 10)),
                  ("img", 0.7, (1, 1, 10, 10))]    # a second hit on a matched object: fp
    assert math.isclose(class_ap(detections, gt, 0.5, use_07_metric=False), 1.0)
    shifted = [("img", 0.9, (3, 1, 12, 10))]     # IoU 8*10 / (2*100 - 80) = 2/3
    assert class_ap(shifted, gt, 0.65, False) == 1.0 and class_ap(shifted, gt, 0.70, False) == 0.0
    assert math.isnan(class_ap(detections, {"img": []}, 0.5, False))


def test_voc_metrics_leave_classes_without_objects_out():
    ground_truth = {"a": [VocObject("cat", (1, 1, 10, 10), False)], "b": []}
    detections = {"cat": [("a", 0.9, (1, 1, 10, 10))], "dog": [("b", 0.9, (1, 1, 10, 10))]}
    assert voc_metrics(detections, ground_truth, ["cat", "dog"], use_07_metric=True) == {
        "AP": 100.0, "AP50": 100.0, "AP75": 100.0}


# ------------------------------------------------------------------------------------ scaling

VOC07 = Schedule(16, 0.02, 12500, (9500,), 100, 5000, 0)


def test_schedule_kept_when_the_batch_fits():
    assert scale_schedule(VOC07, 8) == (VOC07, "batch 16 kept: 2 image(s) per device on 8 devices")
    assert scale_schedule(VOC07, 1)[0] == VOC07  # no memory limit given (CPU): keep 16 on one device
    assert scale_schedule(VOC07, 2, max_ims_per_device=8)[0] == VOC07


def test_schedule_scaled_linearly_when_it_does_not_fit():
    scaled, message = scale_schedule(VOC07, 4, max_ims_per_device=2)
    assert scaled == Schedule(8, 0.01, 25000, (19000,), 200, 10000, 0)
    assert "linear scaling x0.5" in message and "batch 8" in message
    scaled, _ = scale_schedule(VOC07, 1, max_ims_per_device=1)
    assert (scaled.ims_per_batch, scaled.max_iter, scaled.steps) == (1, 200000, (152000,))
    assert math.isclose(scaled.base_lr, 0.00125)
    uneven, _ = scale_schedule(VOC07, 3)  # 16 images do not split over 3 devices: 15
    assert uneven.ims_per_batch == 15 and math.isclose(uneven.base_lr, 0.02 * 15 / 16)
    assert uneven.max_iter == round(12500 * 16 / 15)
    assert ims_per_device_for_memory(16) == 6 and ims_per_device_for_memory(2) == 1


# ------------------------------------------------------------------------------------- trials


def test_aggregate_mean_and_sample_std_by_hand():
    summary = aggregate([{"AP": 1.0, "AP50": 10.0}, {"AP": 2.0, "AP50": 10.0}, {"AP": 4.0, "AP50": 13.0}])
    assert math.isclose(summary["AP"]["mean"], 7 / 3)
    assert math.isclose(summary["AP"]["std"], math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isclose(summary["AP50"]["std"], math.sqrt(3.0)) and summary["AP50"]["n"] == 3
    flat = aggregate_metrics(summary)
    assert set(flat) == {"AP", "AP_std", "AP50", "AP50_std"}
    single = aggregate([{"AP": 5.0}])
    assert single["AP"]["std"] is None and aggregate_metrics(single) == {"AP": 5.0}
    assert "n/a" in format_summary(single) and "2.33 ± 1.53" in format_summary(summary)


def test_flatten_detectron2_results():
    results = {"bbox": {"AP": 1.0, "AP50": 2.0, "AP75": 3.0, "APs": float("nan"), "AP-circle": 9.0},
               "segm": {"AP": 4.0, "AP50": 5.0, "AP75": 6.0}}
    assert flatten_results(results) == {"AP": 1.0, "AP50": 2.0, "AP75": 3.0,
                                        "mask_AP": 4.0, "mask_AP50": 5.0, "mask_AP75": 6.0}


def test_plan_trials_distinct_seeds_and_folders(tmp_path):
    trials = plan_trials(tmp_path, 3, base_seed=7)
    assert [(t.index, t.seed, t.folder.name) for t in trials] == [(1, 7, "trial1"), (2, 8, "trial2"), (3, 9, "trial3")]
    with pytest.raises(UserError):
        plan_trials(tmp_path, 0)


def test_interrupted_run_finishes_only_the_missing_trials(tmp_path):
    trained, published = [], []

    def train(trial: Trial) -> None:
        trained.append(trial.index)
        if trial.index == 2 and trained.count(2) == 1:
            raise KeyboardInterrupt  # killed in the middle of trial 2
        trial.folder.mkdir(parents=True, exist_ok=True)
        trial.results_file.write_text(json.dumps({"results": {"bbox": {"AP": float(trial.seed), "AP50": 50.0}}}))

    def publish(trial: Trial, metrics: dict) -> None:
        published.append(trial.index)
        trial.record_file.write_text(json.dumps(metrics))

    trials = plan_trials(tmp_path, 3, base_seed=10)
    with pytest.raises(KeyboardInterrupt):
        run_trials(trials, train, publish, log=lambda _: None)
    assert (trained, published) == ([1, 2], [1])
    results = run_trials(trials, train, publish, log=lambda _: None)
    assert trained == [1, 2, 2, 3] and published == [1, 2, 3]
    assert [r["AP"] for r in results] == [10.0, 11.0, 12.0]
    run_trials(trials, train, publish, log=lambda _: None)  # all finished: nothing runs again
    assert trained == [1, 2, 2, 3] and published == [1, 2, 3]


def test_trial_without_metrics_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError) as excinfo:
        run_trials(plan_trials(tmp_path, 1), lambda t: None, lambda t, m: None, log=lambda _: None)
    assert "ended without" in one_line_error(excinfo)


# ------------------------------------------------------------------------------------ weights


def detector_shapes() -> dict:
    return {"backbone.stem.conv1.weight": (64, 3, 7, 7), "backbone.stem.conv1.norm.running_mean": (64,),
            "backbone.stem.conv1.norm.num_batches_tracked": (), "backbone.res2.0.conv1.weight": (64, 64, 1, 1),
            "roi_heads.res5.0.conv1.weight": (512, 1024, 1, 1), "roi_heads.res5.norm.weight": (2048,),
            "proposal_generator.rpn_head.conv.weight": (1024, 1024, 3, 3),
            "roi_heads.box_predictor.cls_score.weight": (21, 2048)}


def converted_shapes() -> dict:
    return {"stem.conv1.weight": (64, 3, 7, 7), "stem.conv1.norm.running_mean": (64,),
            "stem.conv1.norm.num_batches_tracked": (), "res2.0.conv1.weight": (64, 64, 1, 1),
            "res5.0.conv1.weight": (512, 1024, 1, 1)}


def test_weights_fill_every_backbone_tensor():
    match = match_weights(detector_shapes(), converted_shapes())
    assert match.complete and len(match.matched) == 4
    assert match.fresh == ["proposal_generator", "roi_heads.box_predictor", "roi_heads.res5.norm"]
    assert match.summary().startswith("4/4 backbone tensors loaded")
    check_weights(match, "w.pkl")


@pytest.mark.parametrize("change, expected", [
    (lambda c: c.pop("res5.0.conv1.weight"), "missing: res5.0.conv1.weight"),
    (lambda c: c.update({"stem.fc.weight": (10, 2048)}), "unused: stem.fc.weight"),
    (lambda c: c.update({"res2.0.conv1.weight": (64, 32, 1, 1)}), "wrong shape: res2.0.conv1.weight"),
    (lambda c: c.clear(), "missing: stem.conv1.weight"),
])
def test_incomplete_weights_stop_with_one_line(change, expected):
    shapes = converted_shapes()
    change(shapes)
    with pytest.raises(UserError) as excinfo:
        check_weights(match_weights(detector_shapes(), shapes), "w.pkl")
    assert expected in one_line_error(excinfo)


# ---------------------------------------------------------------------------------- pre-flight


def test_detectron2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as excinfo:
        preflight.require_detectron2()
    message = one_line_error(excinfo)
    assert "not installed" in message and "facebookresearch/detectron2" in message


def test_cli_without_detectron2_is_one_line_exit_2(monkeypatch, capsys):
    from simsiam_eval.cli import main

    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)
    assert main(["transfer", "--checkpoint", "random:resnet50", "--task", "voc07"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simsiam-eval transfer: error: detectron2 is not installed") and "\n" not in err
    assert main(["transfer", "--checkpoint", "x", "--task", "voc07", "SOLVER.MAX_ITER"]) == 2
    assert "KEY VALUE pairs" in capsys.readouterr().err


def test_preflight_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(UserError) as excinfo:
        preflight.check_datasets(["voc_2007_trainval"])
    assert "missing" in one_line_error(excinfo) and "VOC2007/" in str(excinfo.value)
    with pytest.raises(UserError) as excinfo:
        preflight.check_datasets(["nowhere_set"])
    assert "unknown dataset 'nowhere_set'" in one_line_error(excinfo)
    preflight.check_datasets(["nowhere_set"], known=lambda name: True)
    sized = REAL_WORLD_XML.replace("<width></width><height/>", "<width>64</width><height>48</height>")
    folder = make_voc_folder(tmp_path / "mine", sized)
    preflight.check_datasets(["voc:mine@train"])
    (folder / "JPEGImages" / "img1.jpg").unlink()
    with pytest.raises(UserError) as excinfo:
        preflight.check_datasets(["voc:mine@train"])
    assert "1 of 1 image files missing" in one_line_error(excinfo)


def test_preflight_num_classes_and_class_lists():
    preflight.check_classes(6, {"train": list("abcdef")}, {"test": list("abcdef")})
    with pytest.raises(UserError) as excinfo:
        preflight.check_classes(20, {"train": list("abcdef")}, {"test": list("abcdef")})
    assert "NUM_CLASSES is 20 but train has 6 classes; add MODEL.ROI_HEADS.NUM_CLASSES 6" in one_line_error(excinfo)
    with pytest.raises(UserError) as excinfo:
        preflight.check_classes(6, {"train": list("abcdef")}, {"test": list("abcdfe")})
    assert "different classes" in one_line_error(excinfo)
