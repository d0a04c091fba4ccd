"""Two processes on one feature cache: a reader racing a writer only ever sees complete entries, and two
kNN runs on the same checkpoint and data at once both finish, agree, and leave one complete entry per split."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from simsiam_eval.features import FeatureCache

ROWS, DIM, WRITES = 4096, 64, 30
WRITER = f"""
import sys, torch
from simsiam_eval.features import FeatureCache
cache = FeatureCache(sys.argv[1])
for i in range(1, {WRITES} + 1):
    cache.save("entry", torch.full(({ROWS}, {DIM}), float(i)), torch.full(({ROWS},), i), {{"write": i}})
"""


def test_a_reader_racing_a_writer_sees_only_complete_entries(tmp_path, capfd):
    cache = FeatureCache(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    seen = set()
    while writer.poll() is None or not seen:
        found = cache.load("entry")
        if found is not None:
            features, labels = found
            value = int(labels[0])
            assert torch.equal(features, torch.full((ROWS, DIM), float(value)))
            assert torch.equal(labels, torch.full((ROWS,), value))
            seen.add(value)
    assert writer.wait() == 0
    assert "discarded" not in capfd.readouterr().err
    assert len(seen) > 1  # the reader did meet the writer's successive versions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.json", "entry.pt"]


def test_two_knn_runs_at_once_share_the_cache(shapes_root, tmp_path):
    cache = tmp_path / "cache"
    runs = [subprocess.Popen([sys.executable, "-m", "simsiam_eval", "knn", "--checkpoint", "random:resnet18:cifar:8",
                              "--train", f"shapes:{shapes_root}@train", "--val", f"shapes:{shapes_root}@val",
                              "--workers", "0", "--no-progress", "--cache-dir", str(cache),
                              "--output-dir", str(tmp_path / f"run{i}")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [run.communicate()[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert not any("discarded" in err for err in errors)
    records = [json.loads(next((tmp_path / f"run{i}").glob("*.json")).read_text()) for i in range(2)]
    assert records[0]["metrics"] == records[1]["metrics"]
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 4 and {p.split(".")[-1] for p in entries} == {"pt", "json"}, entries
    for key in {p.split(".")[0] for p in entries}:
        assert FeatureCache(cache).load(key) is not None
