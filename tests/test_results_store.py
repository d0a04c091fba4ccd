"""The results store: JSON + SQLite publishing, selection, crash safety, concurrent writers."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from simsiam_eval.errors import UserError
from simsiam_eval.results.records import build_record, checkpoint_name, dataset_name, record_dataset
from simsiam_eval.results.store import load_records, publish_record, read_records, select_records


def make_record(protocol="knn", path="runs/a/checkpoint_0005.pth.tar", top1=50.0, dataset="shapes",
                trial=None, tags=(), **extra):
    return build_record(protocol, {"top1": top1, "top5": 90.0},
                        {"path": path, "sha256": "ab" * 32, "arch": "resnet18", "format": "simsiam", **extra},
                        {"name": dataset, "train": "shapes:x@train"}, {"k": 200}, started=0.0, seconds=1.5,
                        seed=trial, trial=trial, tags=tags)


def test_publish_writes_json_and_db(tmp_path):
    rec = make_record(tags=["baseline"])
    publish_record(rec, json_path=tmp_path / "run" / "knn.json", db_path=tmp_path / "results.db")
    on_disk = json.loads((tmp_path / "run" / "knn.json").read_text())
    assert on_disk == rec and on_disk["id"]
    stored = read_records(tmp_path / "results.db")
    assert stored == [rec]
    # Re-publishing the same record (same id) does not duplicate it.
    publish_record(rec, db_path=tmp_path / "results.db")
    assert len(read_records(tmp_path / "results.db")) == 1
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_publish_rejects_incomplete_record(tmp_path):
    rec = make_record()
    del rec["metrics"]
    with pytest.raises(ValueError, match="metrics"):
        publish_record(rec, db_path=tmp_path / "r.db")
    assert not (tmp_path / "r.db").exists()


def test_names_and_filters(tmp_path):
    db = tmp_path / "r.db"
    recs = [make_record("knn", top1=10), make_record("linear", top1=20),
            make_record("knn", path="random:resnet18:cifar:32", top1=5, tags=["baseline"]),
            make_record("linear", dataset="cifar10", name="mine-200ep")]
    for r in recs:
        publish_record(r, db_path=db)
    assert checkpoint_name(recs[0]) == "a/checkpoint_0005"
    assert checkpoint_name(recs[2]) == "random:resnet18:cifar:32"
    assert checkpoint_name(recs[3]) == "mine-200ep"
    assert record_dataset(recs[3]) == "cifar10"
    assert len(load_records(db, as_frame=False, protocol="knn")) == 2
    assert [r["metrics"]["top1"] for r in load_records(db, as_frame=False, checkpoint="random:*")] == [5]
    assert len(load_records(db, as_frame=False, checkpoint="baseline")) == 1  # a tag
    assert len(load_records(db, as_frame=False, checkpoint="abababab")) == 4  # sha256 prefix
    assert len(load_records(db, as_frame=False, dataset=["shapes"], protocol="linear")) == 1
    assert len(select_records(recs, tag="base*")) == 1
    frame = load_records(db, protocol="linear")
    assert list(frame["name"]) == ["a/checkpoint_0005", "mine-200ep"]
    assert list(frame["metrics.top1"]) == [20.0, 50.0]
    assert list(frame["dataset"]) == ["shapes", "cifar10"]


def test_dataset_names(tmp_path):
    assert dataset_name("shapes:data/shapes@val") == "shapes"
    assert dataset_name("cifar10:/data/cifar@test") == "cifar10"
    assert dataset_name("/data/imagenet/val") == "imagenet"
    assert dataset_name("/data/pets") == "pets"
    rec = make_record()
    rec["data"] = {"train": "fashion-mnist:/d@train", "val": "fashion-mnist:/d@test"}
    publish_record(rec, db_path=tmp_path / "r.db")
    assert read_records(tmp_path / "r.db")[0]["data"]["name"] == "fashion-mnist"


def test_missing_or_garbage_database(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_records(tmp_path / "none.db")
    (tmp_path / "bad.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="bad.db"):
        read_records(tmp_path / "bad.db")


WRITER = textwrap.dedent("""
    import sys
    from simsiam_eval.results.records import build_record
    from simsiam_eval.results.store import publish_record
    db, who, count, blob = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    i = 0
    while count < 0 or i < count:
        rec = build_record("knn", {"top1": float(i)}, {"path": who, "sha256": "0" * 64},
                           {"name": "shapes"}, {"blob": "x" * blob, "i": i}, started=0.0, seconds=0.0,
                           trial=i)
        publish_record(rec, db_path=db)
        i += 1
        if i == 1:
            print("started", flush=True)
""")


def _writer(tmp_path, db, who, count, blob=100):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(db), who, str(count), str(blob)],
                            stdout=subprocess.PIPE, text=True)


def _check_consistent(db):
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT id, trial, record FROM records").fetchall()
    conn.close()
    for rid, trial, text in rows:
        rec = json.loads(text)  # a half record would not parse
        assert rec["id"] == rid and rec["trial"] == trial and rec["metrics"]["top1"] == float(trial)
    return rows


def test_killed_writer_leaves_database_consistent(tmp_path):
    db = tmp_path / "r.db"
    # Large records (2 MB each) so that the kill very likely lands inside a write.
    proc = _writer(tmp_path, db, "killed", -1, blob=2_000_000)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = _check_consistent(db)
    assert len(rows) >= 1
    trials = sorted(r[1] for r in rows)
    assert trials == list(range(len(trials)))  # records are whole and in order, none half-written
    # The database stays usable after the crash.
    publish_record(make_record(), db_path=db)
    assert len(read_records(db)) == len(rows) + 1


def test_concurrent_writers_lose_no_record(tmp_path):
    db = tmp_path / "r.db"
    count = 40
    procs = [_writer(tmp_path, db, f"w{i}", count) for i in range(3)]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    rows = _check_consistent(db)
    assert len(rows) == 3 * count
    recs = read_records(db)
    for i in range(3):
        assert sorted(r["trial"] for r in recs if r["checkpoint"]["path"] == f"w{i}") == list(range(count))
