"""The demo: shapes data, then the packaged suite suites/demo (the full run takes minutes;
`simsiam-eval demo` prints its numbers). These tests read the suite and check its bookkeeping."""
from __future__ import annotations

import pytest
import yaml

from simsiam_eval.cli import main
from simsiam_eval.commands.demo import (DETECTION, SUITE, Steps, detection_unavailable, drop_evaluation,
                                        suite_overrides, summary)
from simsiam_eval.results.records import build_record
from simsiam_eval.results.store import publish_record, read_records
from simsiam_eval.suite.jobs import SUITE_JOB, expand_jobs, job_state, recorded_keys
from simsiam_eval.suite.spec import read_suite

NAMES = ["SimSiam (demo)", "SimSiam init (no pretraining)", "random init (torchvision)"]


def demo_suite(out, epochs=2):
    return read_suite(SUITE, suite_overrides(out, epochs))


def test_the_suite_evaluates_as_the_demo_did(tmp_path):
    """kNN with the preset's monitor k, T and image size; the cached SGD linear probe over seeds 0-2; the
    preset's network, its init and torchvision's random init of the same network: the old demo's numbers."""
    suite = demo_suite(tmp_path)
    pre = suite.pretrain[0].config
    assert pre.epochs == 2 and [c.name for c in suite.checkpoints] == [NAMES[2], NAMES[0], NAMES[1]]
    assert suite.checkpoints[0].source == f"random:{pre.model.arch}:{pre.model.stem}:{pre.model.width}"
    jobs = [job for job in expand_jobs(suite) if not job.pretrain]
    by_protocol = {}
    for job in jobs:
        by_protocol.setdefault(job.protocol, []).append(job)
    assert {p: len(j) for p, j in by_protocol.items()} == {"knn": 3, "linear": 9, "transfer": 3}
    assert [job.checkpoint.name for job in jobs if job.protocol == "knn"] == NAMES  # the table's row order
    for job in by_protocol["knn"]:
        assert job.config.device == "cpu"
        assert (job.config.k, job.config.temperature, job.config.image_size) == ([pre.knn.k], pre.knn.temperature,
                                                                                 pre.knn.image_size)
    seeds = {}
    for job in by_protocol["linear"]:
        cfg = job.config
        assert (cfg.mode, cfg.optimizer, cfg.base_lr, cfg.batch_size, cfg.epochs, cfg.image_size) == (
            "cached", "sgd", 1.0, 256, 100, pre.knn.image_size) and cfg.device == "cpu"
        seeds.setdefault(job.checkpoint.name, []).append(cfg.seed)
    assert seeds == {name: [0, 1, 2] for name in NAMES}
    for job in jobs:
        assert "demo" in job.config.tags and job.config.name == job.checkpoint.name


def test_everything_goes_under_the_output_dir(tmp_path):
    suite = demo_suite(tmp_path)
    pre = suite.pretrain[0].config
    data = f"shapes:{tmp_path / 'data' / 'shapes'}"
    assert suite.output_dir == tmp_path and suite.results == tmp_path / "results.db"
    assert suite.cache_dir == str(tmp_path / "cache") and suite.datasets["shapes"] == {"train": f"{data}@train",
                                                                                       "val": f"{data}@val"}
    assert (pre.data.train, pre.knn.train, pre.knn.val) == (f"{data}@train", f"{data}@train", f"{data}@val")
    assert suite.pretrain[0].final_checkpoint.parent.parent == tmp_path / "pretrain"
    assert suite.evaluations[DETECTION].keys["data_root"] == str(tmp_path / "data")
    assert read_suite(SUITE, suite_overrides(tmp_path, None)).pretrain[0].config.epochs == 20  # the preset's


def test_a_recorded_job_is_not_run_again(tmp_path):
    suite = demo_suite(tmp_path)
    job = next(job for job in expand_jobs(suite) if job.checkpoint and job.checkpoint.name == NAMES[2])
    assert job_state(job, set()) == "left"
    record = build_record(job.protocol, {"top1": 42.0}, {"path": job.checkpoint.source, "sha256": None},
                          job.data, {SUITE_JOB: job.key}, 0.0, 1.0, tags=list(job.config.tags), name=job.config.name)
    publish_record(record, None, suite.results)
    assert job_state(job, recorded_keys(read_records(suite.results))) == "done"


def test_detection_config_fits_the_checkpoint(tmp_path):
    """The smoke config the demo's detection jobs use is written for the preset's network (depth, stem,
    width), and every checkpoint of the suite, baselines included, is fine-tuned the same way."""
    from transfer.configs import task_config

    suite = demo_suite(tmp_path)
    model = suite.pretrain[0].config.model
    path = task_config(suite.evaluations[DETECTION].keys["task"])
    resnets = yaml.safe_load(path.read_text())["MODEL"]["RESNETS"]
    assert (f"resnet{resnets['DEPTH']}", resnets["STEM_TYPE"], resnets["STEM_OUT_CHANNELS"],
            resnets["RES2_OUT_CHANNELS"]) == (model.arch, model.stem, model.width, model.width)
    transfer = [job for job in expand_jobs(suite) if job.protocol == "transfer"]
    assert [job.checkpoint.name for job in transfer] == NAMES
    assert {job.config.trials for job in transfer} == {1}


def test_skipping_detection_drops_its_jobs(tmp_path, monkeypatch):
    from test_convert import hide_module

    suite = demo_suite(tmp_path)
    drop_evaluation(suite, DETECTION)
    assert [job.protocol for job in expand_jobs(suite)].count("transfer") == 0 and len(expand_jobs(suite)) == 13
    assert detection_unavailable(skip=True) == "--skip-detection"
    hide_module(monkeypatch, "detectron2")
    assert "detectron2 is not installed" in detection_unavailable(skip=False)


def test_summary_says_where_everything_is(tmp_path):
    steps = Steps()
    steps.run("1/2 data: generate", lambda: None)
    text = summary(tmp_path, steps, "simsiam-eval suite suites/demo output_dir=x", [tmp_path / "tables" / "table4.md"],
                   [tmp_path / "plots" / "a.png"], "skipped: no detectron2")
    for part in ("results.db", "table4.md", "a.png", "pretrain", "skipped: no detectron2", "1/2 data",
                 "simsiam-eval suite suites/demo output_dir=x"):
        assert part in text
    assert len(text.splitlines()) <= 12


def test_demo_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0
    assert "--output-dir" in capsys.readouterr().out


# The demo's detection jobs convert their checkpoint through transfer.run.convert_weights.
def _convert(tmp_path, spec="random:resnet18"):
    from simsiam_eval.checkpoints import read_checkpoint
    from simsiam_eval.config import Config
    from transfer.run import convert_weights

    return convert_weights(Config({"checkpoint": spec, "format": "auto"}), read_checkpoint(spec), tmp_path)


def test_conversion_says_which_check_ran_without_detectron2(monkeypatch, tmp_path, capsys):
    from test_convert import hide_module

    hide_module(monkeypatch, "detectron2")
    weights = _convert(tmp_path)
    assert weights.is_file() and weights.parent == tmp_path / "weights"
    printed = capsys.readouterr().out
    check = next(line for line in printed.splitlines() if line.startswith("torchvision pooled features"))
    assert "(detectron2 not installed)" in check and check.split()[6] == "ok" and "skipped" not in printed


def test_a_wrong_conversion_is_not_reported_as_verified(monkeypatch, tmp_path, capsys):
    """A writer that swaps a BN layer's running mean and variance (same shape), Detectron2 absent: an
    error saying the verification failed, no weights file, nothing fine-tuned on them."""
    from test_convert import hide_module

    from simsiam_eval.checkpoints import writers
    from simsiam_eval.errors import UserError

    hide_module(monkeypatch, "detectron2")
    right = writers.detectron2_model

    def swapped(ckpt):
        model = right(ckpt)
        mean, var = "res3.0.conv2.norm.running_mean", "res3.0.conv2.norm.running_var"
        model[mean], model[var] = model[var], model[mean]
        return model

    monkeypatch.setattr(writers, "detectron2_model", swapped)
    with pytest.raises(UserError, match="verification failed"):
        _convert(tmp_path)
    assert not list(tmp_path.rglob("*.pkl")) and " ok" not in capsys.readouterr().out


def test_an_override_picks_a_list_item_by_index(tmp_path):
    from simsiam_eval.errors import UserError

    assert demo_suite(tmp_path, epochs=3).pretrain[0].config.epochs == 3  # pretrain.0.overrides.epochs=3
    path = tmp_path / "two.yaml"
    path.write_text("checkpoints: [{name: a, random: resnet18}, {name: b, random: resnet18}]\n"
                    "datasets: {d: {train: 'shapes:x@train', val: 'shapes:x@val'}}\n"
                    "evaluations: {knn: {protocol: knn, datasets: [d]}}\n")
    assert [c.source for c in read_suite(path, ["checkpoints.1.random=resnet34"]).checkpoints] == [
        "random:resnet18", "random:resnet34"]
    for bad, problem in (("pretrain.1.overrides.epochs=3", "not an index of a list of 1"),
                         ("pretrain.0=3", "'pretrain' is a list")):
        with pytest.raises(UserError, match=problem):
            read_suite(SUITE, [bad])
