"""Fault injection (tools/fault_injection.py): every target killed with SIGKILL and re-run ends as one
uninterrupted run; the fault points, the clean-up of a killed write and the comparison itself."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from simsiam_eval.atomic import atomic_write_json
from simsiam_eval.fault_points import POINT_ENV, POINTS, REPORT_ENV
from simsiam_eval.metrics_log import MetricsLog

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "tools" / "fault_injection.py")
fault_injection = sys.modules["fault_injection"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(fault_injection)


def survived(tally) -> None:
    assert not tally.problems, "\n".join(tally.problems)
    assert tally.kills >= 1 and tally.runs_compared >= 1 and tally.files_compared >= 3
    assert tally.bytes_lost == 0 and tally.checked_after_kills >= 1


# The first kill of each short run, where a regression would lose something: between an epoch's
# checkpoint and the rest of the epoch, in the middle of a checkpoint or cache file, between a cache
# entry's description and its features. The second kill is random.
FIRST_KILL = {"pretrain": "epoch-end@1", "linear-protocol": "atomic-write@2", "linear-cached": "cache-entry@2",
              "knn": "atomic-write@2"}


@pytest.mark.parametrize("target", fault_injection.SHORT)
def test_killed_and_rerun_equals_one_uninterrupted_run(target, tmp_path):
    """The short version: pretrain (weights bit for bit), linear in both modes (the same classifier), kNN
    (the same record; its cache: a truncated entry is reported and recomputed)."""
    tally = fault_injection.run_target(target, tmp_path, trials=1, kills=2, seed=0, first=FIRST_KILL[target])
    survived(tally)
    if target == "knn":
        assert tally.truncated_detected == 1


@pytest.mark.slow
def test_suite_killed_and_rerun(tmp_path):
    survived(fault_injection.run_target("suite", tmp_path, trials=1, kills=2, seed=0))


@pytest.mark.slow
@pytest.mark.detectron2
@pytest.mark.timeout(1800)
def test_transfer_killed_and_rerun(tmp_path):
    """Records once each; a trial killed after its first checkpoint (iteration 2 of 4) resumes from it."""
    tally = fault_injection.run_target("transfer", tmp_path, trials=1, kills=2, seed=0, first="trial-step@2")
    survived(tally)
    assert tally.resumes_checked >= 1


def test_fault_point_traces_or_holds_the_process(tmp_path):
    report = tmp_path / "report.txt"
    code = "from simsiam_eval.fault_points import fault_point\nfor _ in range(3): fault_point('atomic-rename')\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), REPORT_ENV: str(report)}
    subprocess.run([sys.executable, "-c", code], env={**env, POINT_ENV: "*"}, check=True)
    assert [line.split()[0] for line in report.read_text().splitlines()] == [
        "atomic-rename@1", "atomic-rename@2", "atomic-rename@3"]
    report.unlink()
    held = subprocess.Popen([sys.executable, "-c", code], env={**env, POINT_ENV: "atomic-rename@2"})
    deadline = time.time() + 30
    while not report.is_file() or not report.read_text():
        assert held.poll() is None and time.time() < deadline
        time.sleep(0.05)
    assert report.read_text() == f"atomic-rename@2 {held.pid}\n"
    time.sleep(0.2)
    assert held.poll() is None  # waits to be killed
    held.send_signal(signal.SIGKILL)
    held.wait()
    subprocess.run([sys.executable, "-c", code], env={k: v for k, v in env.items() if k != REPORT_ENV}, check=True)


def test_every_named_point_is_placed_in_the_code():
    sources = "\n".join(p.read_text() for p in [*ROOT.glob("simsiam_eval/**/*.py"), *ROOT.glob("pretrain/*.py"),
                                                 *ROOT.glob("transfer/*.py")])
    for point in POINTS:
        assert f'fault_point("{point}")' in sources, point


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    left = tmp_path / f".record.json.{dead.pid}@{host}.abc123.tmp"
    live = tmp_path / f".record.json.{os.getpid()}@{host}.def456.tmp"  # a writer still at work
    other = tmp_path / f".record.json.{dead.pid}@elsewhere.ghi789.tmp"  # another host's: its pid means nothing here
    for path in (left, live, other):
        path.write_text("{")
    atomic_write_json({"a": 1}, tmp_path / "record.json")
    assert json.loads((tmp_path / "record.json").read_text()) == {"a": 1}
    assert not left.exists() and live.exists() and other.exists()


def test_metrics_log_drops_a_line_cut_short_by_a_kill(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    log = MetricsLog(tmp_path, tensorboard=False)
    log.truncate_after("epoch", 2)
    log.record({"epoch": 3}, 3)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'


def test_comparison_finds_a_changed_bit_a_missing_file_and_a_leftover(tmp_path):
    target = fault_injection.TARGETS["pretrain"]
    reference, trial = tmp_path / "reference", tmp_path / "trial1"
    for run in (reference, trial):
        (run / "out").mkdir(parents=True)
        atomic_write_json({"id": run.name, "metrics": {"top1": 50.0}, "path": str(run / "out")}, run / "out" / "r.json")
    weights = torch.arange(4, dtype=torch.float32)
    torch.save({"w": weights}, reference / "out" / "checkpoint_0000.pth.tar")
    (reference / "out" / "metrics.jsonl").write_text('{"epoch": 1, "seconds": 3.0}\n')
    (trial / "out" / "metrics.jsonl").write_text('{"epoch": 1, "seconds": 9.0}\n')
    tally = fault_injection.Tally("pretrain")
    fault_injection.compare(target, reference, trial, tally)  # ids, paths and seconds may differ
    assert tally.problems == ["pretrain: trial1/out/checkpoint_0000.pth.tar missing"]

    flipped = weights.clone()
    flipped.view(torch.int32)[2] ^= 1  # one bit
    torch.save({"w": flipped}, trial / "out" / "checkpoint_0000.pth.tar")
    (trial / "out" / ".checkpoint_0000.pth.tar.1@host.x.tmp").write_bytes(b"torn")
    tally = fault_injection.Tally("pretrain")
    fault_injection.compare(target, reference, trial, tally)
    assert sorted(tally.problems) == [
        "pretrain: trial1/out/.checkpoint_0000.pth.tar.1@host.x.tmp left over (not in the reference)",
        "pretrain: trial1/out/checkpoint_0000.pth.tar differs from the reference"]
    assert tally.bytes_lost == (reference / "out" / "checkpoint_0000.pth.tar").stat().st_size


def test_a_record_published_again_after_a_kill_is_stored_once(tmp_path):
    """A command killed after storing its record re-runs and publishes the same record again (other times)."""
    from simsiam_eval.results.store import publish_record, read_records

    def record(started: str, top1: float) -> dict:
        return {"protocol": "knn", "metrics": {"top1": top1}, "checkpoint": {"path": "a.pth", "sha256": "ab" * 32},
                "data": {"train": "x", "val": "y"}, "settings": {"k": 5, "timings": {"features": float(len(started))}},
                "seed": 0, "trial": None, "versions": {}, "git": "abc", "started": started, "seconds": 1.0}

    json_path, db = tmp_path / "knn.json", tmp_path / "results.db"
    publish_record(record("2026-12-04T10:00:00", 50.0), json_path, db)
    publish_record(record("2026-12-04T10:05:00+00", 50.0), json_path, db)  # the re-run: stored once
    assert len(read_records(db)) == 1
    publish_record(record("2026-12-04T10:09:00", 75.0), json_path, db)  # another result: another record
    assert [r["metrics"]["top1"] for r in read_records(db)] == [50.0, 75.0]
