"""``simsiam-eval suite``: job states, a failing job among others, a killed suite resumed, nothing run twice,
features extracted once for kNN and cached linear."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import simsiam_eval.features
from simsiam_eval.cli import main
from simsiam_eval.errors import UserError
from simsiam_eval.results.store import read_records
from simsiam_eval.suite.jobs import SUITE_JOB, job_name
from simsiam_eval.suite.spec import read_suite

ROOT = Path(__file__).resolve().parent.parent
KNN = {"protocol": "knn", "k": [5], "workers": 0, "datasets": ["shapes"]}
LINEAR = {"protocol": "linear", "mode": "cached", "optimizer": "sgd", "base_lr": 1.0, "batch_size": 32,
          "epochs": 2, "workers": 0, "tensorboard": False, "datasets": ["shapes"]}


def write_suite(folder: Path, shapes_root: Path, checkpoints: list[dict], evaluations: dict, **extra) -> Path:
    tree = {"name": "tiny", "output_dir": str(folder / "out"), "cache_dir": str(folder / "cache"),
            "checkpoints": checkpoints,
            "datasets": {"shapes": {"train": f"shapes:{shapes_root}@train", "val": f"shapes:{shapes_root}@val"}},
            "evaluations": evaluations, **extra}
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def records_by_key(db: Path) -> dict[str, list[dict]]:
    found = collections.defaultdict(list)
    for record in read_records(db):
        found[record["settings"][SUITE_JOB]].append(record)
    return found


def test_dry_run_lists_jobs_and_their_states(tmp_path, shapes_root, capsys):
    pretrain = [{"name": "run", "config": "pretrain/shapes_cpu", "overrides": [f"data.train=shapes:{shapes_root}@train"],
                 "init": "run-init"}]
    path = write_suite(tmp_path, shapes_root, [{"name": "rand", "random": "resnet18:cifar:8"},
                                               {"name": "gone", "path": str(tmp_path / "missing.pth.tar")}],
                       {"knn": KNN}, pretrain=pretrain)
    assert main(["suite", str(path), "--dry-run"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(lines) == {"pretrain-run", "rand-knn-shapes", "gone-knn-shapes", "run-knn-shapes", "run-init-knn-shapes"}
    assert " left " in lines["pretrain-run"]
    assert " left " in lines["rand-knn-shapes"]
    assert "checkpoint missing" in lines["gone-knn-shapes"]
    assert "waiting for pretrain run" in lines["run-knn-shapes"]
    assert "waiting for pretrain run" in lines["run-init-knn-shapes"]  # its init.pth.tar: written by the run
    assert not (tmp_path / "out" / "results.db").exists()  # a dry run runs nothing


def test_unknown_evaluation_key_names_the_file_and_key(tmp_path, shapes_root):
    path = write_suite(tmp_path, shapes_root, [{"random": "resnet18:cifar:8"}], {"knn": {**KNN, "kk": 3}})
    with pytest.raises(UserError, match=r"'kk' \(.*suite\.yaml: evaluations\.knn\); did you mean 'k'"):
        read_suite(path)


def test_failing_job_is_reported_and_the_others_run(tmp_path, shapes_root, capsys):
    path = write_suite(tmp_path, shapes_root, [{"name": "gone", "path": str(tmp_path / "missing.pth.tar")},
                                               {"name": "rand", "random": "resnet18:cifar:8"}], {"knn": KNN})
    assert main(["suite", str(path)]) == 1  # exit status: the number of failed jobs
    out = capsys.readouterr().out
    assert f"gone-knn-shapes: FAILED: checkpoint not found: {tmp_path / 'missing.pth.tar'}" in out
    records = read_records(tmp_path / "out" / "results.db")
    assert [r["checkpoint"]["name"] for r in records] == ["rand"]
    assert "tiny" in records[0]["tags"] and records[0]["settings"][SUITE_JOB]
    assert "| rand " in out  # the suite's table


def test_knn_and_cached_linear_share_features_and_a_rerun_runs_nothing(tmp_path, shapes_root, monkeypatch, capsys):
    calls = []
    extract = simsiam_eval.features.extract_features
    monkeypatch.setattr(simsiam_eval.features, "extract_features", lambda *a, **k: calls.append(1) or extract(*a, **k))
    path = write_suite(tmp_path, shapes_root, [{"name": "rand", "random": "resnet18:cifar:8"}],
                       {"knn": KNN, "linear": LINEAR})
    assert main(["suite", str(path)]) == 0
    assert len(calls) == 2  # train and val, once, for both jobs
    first = records_by_key(tmp_path / "out" / "results.db")
    assert len(first) == 2 and all(len(v) == 1 for v in first.values())
    capsys.readouterr()
    assert main(["suite", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rand-knn-shapes: done" in out and "rand-linear-shapes: done" in out and "running" not in out
    assert records_by_key(tmp_path / "out" / "results.db").keys() == first.keys()
    assert len(read_records(tmp_path / "out" / "results.db")) == 2
    assert len(calls) == 2


@pytest.mark.slow
def test_suite_killed_and_rerun_equals_one_uninterrupted_run(tmp_path, shapes_root, capsys):
    checkpoints = [{"name": "a", "random": "resnet18:cifar:8"}, {"name": "b", "random": "resnet18:cifar:16"}]
    path = write_suite(tmp_path, shapes_root, checkpoints, {"knn": KNN, "linear": {**LINEAR, "epochs": 4}})
    db = tmp_path / "out" / "results.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "simsiam_eval", "suite", str(path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (db.is_file() and read_records(db)):
        assert child.poll() is None and time.time() < deadline, "the suite ended before its first record"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(read_records(db)) < 4  # killed part way

    assert main(["suite", str(path)]) == 0
    assert "a-knn-shapes: done" in capsys.readouterr().out  # the recorded job is not run again
    other = tmp_path / "other"
    assert main(["suite", str(path), f"output_dir={other}", f"cache_dir={other / 'cache'}"]) == 0

    resumed, uninterrupted = records_by_key(db), records_by_key(other / "results.db")
    assert len(resumed) == 4 and resumed.keys() == uninterrupted.keys()
    for key, records in resumed.items():
        assert len(records) == 1, f"job {key} recorded {len(records)} times"
        assert records[0]["metrics"] == uninterrupted[key][0]["metrics"]


def test_pretraining_run_precedes_the_evaluation_of_its_checkpoint(tmp_path, shapes_root, capsys):
    overrides = {"epochs": 1, "workers": 0, "batch_size": 24, "tensorboard": False, "knn": {"every_n_epochs": 0},
                 "data": {"train": f"shapes:{shapes_root}@train"}, "model": {"width": 8, "dim": 64, "pred_dim": 16}}
    path = write_suite(tmp_path, shapes_root, [], {"knn": KNN},
                       pretrain=[{"name": "run", "config": "pretrain/shapes_cpu", "overrides": overrides,
                                  "init": "run-init"}])
    assert main(["suite", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.index("pretrain-run: checkpoint") < out.index("run-knn-shapes: top-1")
    assert out.index("pretrain-run: checkpoint") < out.index("run-init-knn-shapes: top-1")
    records = {r["checkpoint"]["name"]: r for r in read_records(tmp_path / "out" / "results.db")}
    assert set(records) == {"run", "run-init"}
    assert records["run"]["checkpoint"]["path"].endswith("checkpoint_0000.pth.tar")
    assert records["run-init"]["checkpoint"]["path"].endswith("init.pth.tar")


def test_torchrun_command_runs_one_job_with_the_same_overrides(tmp_path, shapes_root):
    from simsiam_eval.suite.jobs import expand_jobs
    from simsiam_eval.suite.run import torchrun_command

    path = write_suite(tmp_path, shapes_root, [{"name": "rand", "random": "resnet18:cifar:8"}], {"knn": KNN})
    suite = read_suite(path, ["evaluations.knn.k=[3]"])
    (job,) = expand_jobs(suite)
    command = torchrun_command(suite, job, 2)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert command[6:] == ["simsiam_eval", "suite", str(path), "evaluations.knn.k=[3]", "--only", "rand-knn-shapes"]
    assert job.config.k == [3]


def test_slurm_launcher_through_submitits_local_executor(tmp_path, shapes_root, capsys):
    """``--launcher slurm`` with ``cluster: local``: each job submitted as a submitit job running
    ``suite --only JOB``, recorded in the suite's database; a failing one is reported, the exit status counts it."""
    pytest.importorskip("submitit", reason="submitit not installed (pip install 'simsiam-eval[slurm]')")
    path = write_suite(tmp_path, shapes_root, [{"name": "rand", "random": "resnet18:cifar:8"},
                                               {"name": "gone", "path": str(tmp_path / "missing.pth.tar")}],
                       {"knn": KNN}, launcher={"cluster": "local", "timeout_min": 10})
    assert main(["suite", str(path), "--launcher", "slurm"]) == 1
    out = capsys.readouterr().out
    assert "gone-knn-shapes: FAILED" in out and "rand-knn-shapes: done (job " in out
    records = records_by_key(tmp_path / "out" / "results.db")
    assert [r["checkpoint"]["name"] for rs in records.values() for r in rs] == ["rand"]
    assert (tmp_path / "out" / "logs" / "slurm" / "rand-knn-shapes").is_dir()
    assert main(["suite", str(path), "--launcher", "slurm", "--only", "rand-knn-shapes"]) == 0  # done: not re-run
    assert len(read_records(tmp_path / "out" / "results.db")) == 1


def test_a_glob_over_one_runs_checkpoints_is_an_epoch_sweep(tmp_path, shapes_root, capsys):
    """Each checkpoint of the glob is evaluated; the suite plots top-1 against epoch beside the run's monitor."""
    run = tmp_path / "run"
    run.mkdir()
    for epoch, width in ((0, 8), (1, 16)):  # two different random inits stand in for two epochs
        assert main(["convert", f"random:resnet18:cifar:{width}", str(run / f"checkpoint_{epoch:04d}.pth.tar"),
                     "--to", "torchvision", "--no-numerical-check"]) == 0
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "knn_top1": 30.0 + e}) + "\n" for e in (1, 2)))
    path = write_suite(tmp_path, shapes_root, [{"name": "sweep", "glob": str(run / "checkpoint_*.pth.tar")}],
                       {"knn": KNN})
    assert main(["suite", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sweep-checkpoint_0000-knn-shapes" in out and "sweep-checkpoint_0001-knn-shapes" in out
    points = pd.read_csv(tmp_path / "out" / "plots" / "sweep1.csv")
    assert points["epoch"].tolist() == [1, 2]  # checkpoint_{e:04d} holds epoch e + 1
    assert (tmp_path / "out" / "plots" / "sweep1.png").stat().st_size > 0


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs" / "suites").glob("*.yaml")))
def test_packaged_suites_read_and_list_their_jobs(name, tmp_path, capsys):
    assert main(["suite", f"suites/{name}", f"output_dir={tmp_path}", "--dry-run"]) == 0
    assert f"suite {name}: " in capsys.readouterr().out


def test_changed_settings_run_in_a_fresh_folder(tmp_path, shapes_root, capsys):
    """A linear job whose settings change is a new job: it runs (in its own folder) instead of
    tripping over the saved state of the old settings, and the table shows it alone."""
    path = write_suite(tmp_path, shapes_root, [{"name": "rand", "random": "resnet18:cifar:8"}], {"linear": LINEAR})
    assert main(["suite", str(path)]) == 0
    capsys.readouterr()
    assert main(["suite", str(path), "evaluations.linear.epochs=3"]) == 0
    table = capsys.readouterr().out.split("## ", 1)[1]
    assert "(n=1)" in table and "(n=2)" not in table  # the table shows the current settings' record only
    records = read_records(tmp_path / "out" / "results.db")
    assert sorted(r["settings"]["epochs"] for r in records) == [2, 3]
    assert len(list((tmp_path / "out" / "jobs" / "rand-linear-shapes").iterdir())) == 2


def test_job_names_are_file_name_safe():
    """Every run of characters a file name should not hold becomes one dash, a name's own dashes included."""
    assert job_name("SimSiam (50 epochs)", "knn", "fashion-mnist") == "SimSiam-50-epochs-knn-fashion-mnist"
    assert job_name("pretrain", "k=1 epoch") == "pretrain-k-1-epoch"
    assert job_name("a/../b", "", "c_d.e") == "a-..-b-c_d.e"
