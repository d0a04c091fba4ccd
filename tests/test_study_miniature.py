"""The study suite in miniature (CI): the packaged study's Fig. 2 pair (SimSiam and no stop-gradient, their
entries and preset as configs/suites/simsiam_study.yaml has them) on scikit-learn's digits, real images
written as MNIST IDX files; the suite's closing step must call the no-stop-gradient run collapsed and the
SimSiam run not, as the paper does."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pretrain.collapse import collapsed_floor, healthy_std
from simsiam_eval.cli import main
from simsiam_eval.config import packaged_config_dir

FIG2 = ("SimSiam", "no stop-gradient")
EPOCHS = 8  # 184 steps of batch 64 (about 1.3 min per run)


def miniature_suite(folder: Path, digits: Path) -> Path:
    """The packaged study suite cut to its Fig. 2 entries and rows, on the digits."""
    packaged = yaml.safe_load((packaged_config_dir() / "suites" / "simsiam_study.yaml").read_text())
    on_digits = {"data": {"train": f"mnist:{digits}@train", "fraction": 1.0}, "epochs": EPOCHS, "workers": 0,
                 "tensorboard": False, "knn": {"train": f"mnist:{digits}@train", "val": f"mnist:{digits}@test"}}
    entries = [entry for entry in packaged["pretrain"] if entry["name"] in FIG2]
    for entry in entries:
        entry.pop("seeds", None)  # one seed each: the miniature must stay within CI's 3 minutes
        overrides = entry.setdefault("overrides", {})
        for key, value in on_digits.items():
            overrides[key] = {**overrides.get(key, {}), **value} if isinstance(value, dict) else value
    with open(packaged_config_dir() / "reference" / "simsiam_study.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["experiment"] == "fig2"]
    with open(folder / "study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    suite = {"name": "study_miniature", "output_dir": str(folder / "out"), "results": str(folder / "results.db"),
             "cache_dir": str(folder / "cache"), "study": "study.csv", "pretrain": entries,
             "datasets": {"digits": {"train": f"mnist:{digits}@train", "val": f"mnist:{digits}@test"}},
             "evaluations": {"knn": {"protocol": "knn", "k": [20], "temperature": 0.1, "workers": 0,
                                     "datasets": ["digits"]}}}
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_no_stop_gradient_collapses_and_simsiam_does_not(tmp_path, digits_root, capsys):
    assert main(["suite", str(miniature_suite(tmp_path, digits_root))]) == 0
    out = capsys.readouterr().out
    assert "Fig. 2" in out
    table = pd.read_csv(tmp_path / "out" / "tables" / "study_fig2.csv").set_index("variant")
    assert table.loc["no stop-gradient", "our verdict"] == "collapses"
    assert table.loc["no stop-gradient", "agrees"] == "yes"
    assert table.loc["SimSiam", "our verdict"] != "collapses"
    # the std against the collapsed floor of batch 64 and the healthy 1/sqrt(d), worked out here
    std = table["collapse std x sqrt(d) (final epoch)"].astype(float)
    floor = collapsed_floor(64) * healthy_std(512) * 512 ** 0.5  # 0.25
    assert floor == pytest.approx(0.25)
    assert std["no stop-gradient"] < 2 * floor < 0.9 < std["SimSiam"] <= 1.0
    assert (tmp_path / "out" / "plots" / "study_fig2.png").is_file()
    for name in ("SimSiam", "no stop-gradient"):  # the kNN monitor ran every epoch (the figure's third panel)
        log = (tmp_path / "out" / "pretrain" / name / "metrics.jsonl").read_text().splitlines()
        assert sum('"knn_top1"' in line for line in log) == EPOCHS
