"""Tables from records: trial aggregation, the bold rule, layouts, and every output format parsing back."""
from __future__ import annotations

import io
import math
import re
import shutil
import subprocess

import pandas as pd
import pytest

from simsiam_eval.cli import main
from simsiam_eval.errors import UserError
from simsiam_eval.report.build import comparison_tables
from simsiam_eval.report.measurements import load_reference, measurements, reference_files
from simsiam_eval.report.render import to_csv, to_latex, to_markdown, write_table
from simsiam_eval.report.tables import Table, best_mask, cell_text, detection_metric, table4, table5
from simsiam_eval.results.records import build_record
from simsiam_eval.results.store import publish_record

KNN = [60.0, 62.0, 61.5]
LINEAR = [70.0, 71.0, 72.5]


def record(protocol, metrics, path="runs/mine/checkpoint_0005.pth.tar", dataset="shapes", trial=None, epochs=5):
    return build_record(protocol, metrics, {"path": path, "sha256": "0" * 64, "epochs": epochs},
                        {"name": dataset}, {}, started=0.0, seconds=1.0, seed=trial, trial=trial)


@pytest.fixture
def records():
    recs = []
    for trial, (k, lin) in enumerate(zip(KNN, LINEAR)):
        recs.append(record("knn", {"top1": k, "top5": 99.0}, trial=trial))
        recs.append(record("linear", {"top1": lin, "top5": 99.5}, trial=trial))
    recs.append(record("linear-cached", {"top1": 69.0}))
    recs.append(record("knn", {"top1": 30.0}, path="random:resnet18:cifar:32", epochs=None))
    recs.append(record("linear", {"top1": 40.0}, path="random:resnet18:cifar:32", epochs=None))
    for trial in range(2):
        recs.append(record("transfer", {"bbox/AP": 10.0 + trial, "bbox/AP50": 20.0, "bbox/AP75": 5.0,
                                        "segm/AP": 8.0, "segm/AP50": 15.0, "segm/AP75": 3.0 + 2 * trial,
                                        "bbox/APs": 1.0}, dataset="coco", trial=trial))
        recs.append(record("transfer", {"AP": 50.0 - trial, "AP50": 80.0, "AP75": 55.0}, dataset="voc07",
                           trial=trial))
    return recs


def hand_stats(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, n


def test_table4_aggregates_trials(records):
    table = table4(measurements(records))
    row = ("mine/checkpoint_0005", "5")
    for column, values in ((("shapes", "kNN top-1"), KNN), (("shapes", "linear top-1 (best epoch)"), LINEAR)):
        mean, std, n = hand_stats(values)
        assert table.mean.loc[row, column] == pytest.approx(mean)
        assert table.std.loc[row, column] == pytest.approx(std)
        assert table.n.loc[row, column] == n
    random_row = ("random:resnet18:cifar:32", "-")
    assert table.mean.loc[random_row, ("shapes", "kNN top-1")] == 30.0
    assert math.isnan(table.std.loc[random_row, ("shapes", "kNN top-1")])  # one trial: no sample std
    assert table.n.loc[random_row, ("shapes", "kNN top-1")] == 1
    assert list(table.mean.columns) == [("shapes", "kNN top-1"), ("shapes", "linear top-1 (best epoch)"),
                                        ("shapes", "linear top-1 (cached, best epoch)")]


LINEAR_METRICS = {"top1": 72.0, "top5": 99.0, "best_epoch": 7, "last_top1": 70.0, "last_top5": 98.0}


def test_table4_linear_column_says_which_epoch_it_shows(tmp_path, capsys):
    recs = [record("linear", LINEAR_METRICS), record("linear-cached", {**LINEAR_METRICS, "top1": 66.0})]
    best = table4(measurements(recs))  # default: main_lincls' headline, the best epoch
    assert list(best.mean.columns) == [("shapes", "linear top-1 (best epoch)"),
                                       ("shapes", "linear top-1 (cached, best epoch)")]
    assert list(best.mean.iloc[0]) == [72.0, 66.0]
    assert any("best epoch" in note and "main_lincls" in note for note in best.notes)
    last = table4(measurements(recs), linear_epoch="last")
    assert list(last.mean.columns) == [("shapes", "linear top-1 (last epoch)"),
                                       ("shapes", "linear top-1 (cached, last epoch)")]
    assert list(last.mean.iloc[0]) == [70.0, 70.0]
    assert "main_lincls" in to_markdown(best) and "last epoch" in to_markdown(last)
    with pytest.raises(UserError, match="best, last"):
        table4(measurements(recs), linear_epoch="final")
    db = tmp_path / "results.db"
    for rec in recs:
        publish_record(rec, db_path=db)
    assert main(["table", str(db), "--linear-epoch", "last"]) == 0
    out = capsys.readouterr().out
    assert "linear top-1 (last epoch)" in out and "70.0 (n=1)" in out and "72.0" not in out


def test_records_written_before_best_and_last_were_separated_read_correctly():
    # such records held top1/top5 of the last epoch and best_top1 (no best_epoch, no best top-5)
    old = record("linear", {"top1": 60.0, "top5": 90.0, "best_top1": 65.0, "loss": 1.0})
    long = measurements([old]).set_index("metric")["value"]
    assert long.to_dict() == {"top1": 65.0, "last_top1": 60.0, "last_top5": 90.0, "loss": 1.0}
    assert table4(measurements([old]), linear_epoch="last").mean.iloc[0, 0] == 60.0


def test_table5_layout_and_metric_names(records):
    table = table5(measurements(records))
    assert list(table.mean.columns) == [(task, m) for task in ("VOC07", "COCO det", "COCO mask")
                                        for m in ("AP50", "AP", "AP75")]
    row = ("mine/checkpoint_0005", "5")
    assert table.mean.loc[row, ("VOC07", "AP")] == pytest.approx(49.5)
    assert table.std.loc[row, ("VOC07", "AP")] == pytest.approx(math.sqrt(0.5))
    assert table.mean.loc[row, ("COCO mask", "AP75")] == pytest.approx(4.0)
    assert table.n.loc[row, ("COCO det", "AP")] == 2
    assert detection_metric("box_AP50") == ("box", "AP50")
    assert detection_metric("mask_AP") == ("mask", "AP")
    assert detection_metric("bbox/APs") is None and detection_metric("top1") is None


def _table(values, columns=("a",)):
    mean = pd.DataFrame(values, index=[f"r{i}" for i in range(len(values))], columns=list(columns))
    nan = pd.DataFrame(float("nan"), index=mean.index, columns=mean.columns)
    return Table(mean, nan, nan)


def test_bold_rule():
    table = _table([[70.0, 1.0], [69.5, 2.0], [69.4, float("nan")], [70.04, 2.46]], columns=("a", "b"))
    bold = best_mask(table, 0.5)
    assert list(bold["a"]) == [True, True, False, True]  # best 70.0 (70.04 shows as 70.0)
    assert list(bold["b"]) == [False, True, False, True]  # best 2.5 (2.46 shown): 2.0 is within 0.5
    assert list(best_mask(table, 0.0)["a"]) == [True, False, False, True]
    assert not best_mask(table, None).to_numpy().any()
    assert list(best_mask(table, 0.5, decimals=2)["a"]) == [True, False, False, True]  # 70.04 - 69.5 > 0.5


def test_cell_text():
    assert cell_text(61.1666, 1.2583, 3) == "61.2 ± 1.3 (n=3)"
    assert cell_text(30.0, float("nan"), 1) == "30.0 (n=1)"
    assert cell_text(81.3, float("nan"), 5.0) == "81.3 (n=5)"  # published mean, std not stated
    assert cell_text(68.1, float("nan"), float("nan")) == "68.1"
    assert cell_text(float("nan"), float("nan"), float("nan")) == ""


def test_reference_files_cite_sources():
    files = {p.name for p in reference_files()}
    assert {"simsiam_table4.csv", "simsiam_table5.csv", "moco_voc0712.csv"} <= files
    ref = load_reference()
    assert ref["source"].str.len().min() > 20
    simsiam5 = ref[(ref["name"] == "SimSiam base (paper)") & (ref["dataset"] == "voc0712")]
    assert dict(zip(simsiam5["metric"], simsiam5["value"])) == {"AP50": 82.0, "AP": 56.4, "AP75": 62.8}
    moco = ref[ref["name"].str.startswith("MoCo v2") & (ref["epochs"] == 800)]
    assert dict(zip(moco["metric"], moco["value"])) == {"AP50": 82.5, "AP": 57.4, "AP75": 64.0}
    assert set(moco["n"]) == {5}


def test_reference_auto_adds_matching_rows_only(records):
    tables = comparison_tables(records)  # shapes kNN/linear, voc07 + coco transfer
    assert set(tables) == {"table4", "table5"}
    assert "SimSiam (paper)" not in tables["table4"].mean.index.get_level_values(0)  # imagenet: not in records
    t5 = tables["table5"]
    assert t5.mean.loc[("SimSiam base (paper)", "200"), ("VOC07", "AP50")] == 75.5
    assert "SimSiam base (paper)" in t5.sources
    assert "MoCo v2 (MoCo README)" not in t5.mean.index.get_level_values(0)  # voc0712 not in records
    everything = comparison_tables(records, layout="table5", reference="all")["table5"]
    assert everything.mean.loc[("MoCo v2 (MoCo README)", "800"), ("VOC07+12", "AP75")] == 64.0
    assert everything.n.loc[("MoCo v2 (MoCo README)", "800"), ("VOC07+12", "AP75")] == 5
    none = comparison_tables(records, layout="table5", reference="none")["table5"]
    assert list(none.mean.index) == [("mine/checkpoint_0005", "5")]


def test_own_reference_file(records, tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("name,epochs,protocol,dataset,metric,value,std,n,source\n"
                    "Lab baseline,100,knn,shapes,top1,65.0,0.5,3,our lab notebook p. 12\n")
    table = comparison_tables(records, layout="table4", reference="none", reference_files=[mine])["table4"]
    row, column = ("Lab baseline", "100"), ("shapes", "kNN top-1")
    assert (table.mean.loc[row, column], table.std.loc[row, column], table.n.loc[row, column]) == (65.0, 0.5, 3)
    assert table.sources == {"Lab baseline": "our lab notebook p. 12"}
    assert best_mask(table).loc[row, column]  # 65.0 is the column's best
    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\nx,1\n")
    with pytest.raises(UserError, match="lacks columns"):
        comparison_tables(records, reference_files=[bad])


def test_formats_parse_back(records, tmp_path):
    table = comparison_tables(records, layout="table5", reference="auto")["table5"]
    bold = best_mask(table, 0.5)
    n_bold = int(bold.to_numpy().sum())
    paths = write_table(table, tmp_path / "t5")
    assert [p.suffix for p in paths] == [".md", ".tex", ".csv", ".html"]

    csv = pd.read_csv(tmp_path / "t5.csv")
    mine = csv[(csv["name"] == "mine/checkpoint_0005") & (csv["task"] == "VOC07") & (csv["metric"] == "AP")]
    assert mine["mean"].item() == pytest.approx(49.5) and mine["n"].item() == 2
    assert mine["std"].item() == pytest.approx(math.sqrt(0.5))
    assert csv["bold"].sum() == n_bold
    assert set(csv.loc[csv["name"] == "SimSiam base (paper)", "source"].str[:9]) == {"Chen & He"}

    html = pd.read_html(io.StringIO((tmp_path / "t5.html").read_text()))[0]
    flat = html.astype(str).to_numpy().ravel().tolist()
    assert "49.5 ± 0.7 (n=2)" in flat and "75.5" in flat
    style = (tmp_path / "t5.html").read_text().split("</style>")[0]
    assert "font-weight: bold" in style and len(re.findall(r"_row\d+_col\d+", style)) == n_bold

    tex = (tmp_path / "t5.tex").read_text()
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex).group(1)
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    for line in filter(str.strip, body.splitlines()):
        assert line.rstrip().endswith(r"\\")
        assert line.count("&") == len(spec) - 1
    assert r"\toprule" in tex and r"\multicolumn{3}{c}{VOC07}" in tex
    assert tex.count(r"\bfseries") == n_bold
    assert r"49.5 $\pm$ 0.7 (n=2)" in tex and "checkpoint\\_0005" in tex and "±" not in tex
    assert tex.count("{") == tex.count("}")

    md = (tmp_path / "t5.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in rows}) == 1 and len(rows) == 2 + len(table.mean)
    assert md.count("**") == 2 * n_bold
    assert "SimSiam base (paper): Chen & He" in md


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex not installed (Debian: apt install texlive-latex-recommended)")
def test_latex_compiles(records, tmp_path):
    table = comparison_tables(records, layout="table5", reference="all")["table5"]
    document = ("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                + to_latex(table) + "\\end{document}\n")
    (tmp_path / "t.tex").write_text(document)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_table_command(records, tmp_path, capsys):
    db = tmp_path / "results.db"
    for rec in records:
        publish_record(rec, db_path=db)
    assert main(["table", str(db), "--layout", "table4", "--output", str(tmp_path / "out" / "t4")]) == 0
    out = capsys.readouterr().out
    assert "**61.2 ± 1.0 (n=3)**" in out and "random:resnet18:cifar:32" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t4.csv", "t4.html", "t4.md", "t4.tex"]
    assert main(["table", str(tmp_path), "--checkpoint", "random:*", "--layout", "pivot", "--rows", "name",
                 "--columns", "protocol,metric", "--no-bold"]) == 0
    out = capsys.readouterr().out
    assert "30.0 (n=1)" in out and "mine" not in out and "**" not in out
    assert main(["table", str(db), "--dataset", "nothing"]) == 2
    assert "no records match" in capsys.readouterr().err
    assert main(["table", str(tmp_path / "missing.db")]) == 2


def test_empty_table_renders():
    empty = Table(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    assert "no matching records" in to_markdown(empty)
    assert to_csv(empty).strip() == "" or pd.read_csv(io.StringIO(to_csv(empty))).empty
