"""Figures: pretraining and linear-probe curves from metrics.jsonl, bar charts from a results database."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

from PIL import Image

from simsiam_eval.cli import main
from simsiam_eval.report.plots import plot_run, read_jsonl
from simsiam_eval.results.records import build_record
from simsiam_eval.results.store import publish_record


def write_jsonl(path, rows, torn_tail=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + ('{"epoch": 99, "lo' if torn_tail else ""))


def make_run(tmp_path):
    run = tmp_path / "run"
    write_jsonl(run / "pretrain" / "metrics.jsonl",
                [{"epoch": e, "lr": 0.05, "loss": -0.2 - 0.1 * e, "collapse_std": 0.03,
                  "collapse_reference": 1 / math.sqrt(512), "knn_top1": 30.0 + e} for e in range(1, 6)]
                + [{"epoch": 5, "lr": 0.05, "loss": -0.75, "collapse_std": 0.035,  # a resumed epoch
                    "collapse_reference": 1 / math.sqrt(512), "knn_top1": 36.0}], torn_tail=True)
    for seed in range(2):  # several linear-probe runs share one figure
        write_jsonl(run / "linear" / f"seed{seed}" / "metrics.jsonl",
                    [{"epoch": e, "loss": 1.0 / e, "lr": 0.1, "top1": 50.0 + e + seed, "top5": 90.0}
                     for e in range(1, 4)])
    for trial in range(3):
        for protocol, value in (("knn", 60.0 + trial), ("linear", 70.0 - trial)):
            publish_record(build_record(protocol, {"top1": value}, {"path": "run/pretrain/checkpoint_0005.pth.tar"},
                                        {"name": "shapes"}, {}, 0.0, 1.0, trial=trial), db_path=run / "results.db")
    return run


def test_read_jsonl_skips_torn_line(tmp_path):
    run = make_run(tmp_path)
    rows = read_jsonl(run / "pretrain" / "metrics.jsonl")
    assert len(rows) == 6 and rows[-1]["knn_top1"] == 36.0


def test_plot_run_writes_png_and_svg(tmp_path):
    run = make_run(tmp_path)
    written = plot_run(run)
    names = sorted(p.name for p in written)
    assert names == ["linear-curves.png", "linear-curves.svg", "pretrain-curves.png", "pretrain-curves.svg",
                     "table4-bars.png", "table4-bars.svg"]
    for path in written:
        assert path.parent == run / "plots" and path.stat().st_size > 1000
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert image.format == "PNG" and 300 < image.width < 1600 and 200 < image.height < 600
        else:
            assert ET.parse(path).getroot().tag.endswith("svg")


def test_plot_command(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["plot", str(run), "--output-dir", str(tmp_path / "figs")]) == 0
    assert "figs/pretrain-curves.png" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
