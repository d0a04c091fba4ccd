"""``simsiam-eval table [SOURCE ...]``: comparison tables from recorded results."""
from __future__ import annotations

import argparse
from pathlib import Path

from simsiam_eval.results.store import DEFAULT_DB_NAME


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "table", help="comparison tables (Table 4 / Table 5 / custom) from recorded results",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Select records, average the trials (mean ± sample std, n shown), lay them out as "
                    "SimSiam's Table 4 (kNN/linear top-1 by method and epochs), Table 5 (VOC07, VOC07+12, "
                    "COCO det, COCO mask x AP50/AP/AP75) or a custom pivot, bold the entries within a "
                    "threshold of each column's best, and print markdown; --output writes markdown, "
                    "LaTeX, CSV and HTML. Published numbers (configs/reference/*.csv, sources cited) sit "
                    "beside yours.",
        epilog="examples:\n"
               "  simsiam-eval table runs/results.db\n"
               "  simsiam-eval table results.db --layout table5 --checkpoint 'mine*' --output paper/table5\n"
               "  simsiam-eval table results.db --layout pivot --rows name --columns protocol,metric "
               "--metrics top1,top5")
    parser.add_argument("sources", nargs="*", metavar="SOURCE",
                        help=f"results databases (.db), record JSON files, or folders holding "
                             f"{DEFAULT_DB_NAME} (default: ./{DEFAULT_DB_NAME})")
    parser.add_argument("--layout", default="auto", choices=("auto", "table4", "table5", "pivot"),
                        help="table shape (default: auto = Table 4 for kNN/linear records, Table 5 for "
                             "transfer records)")
    select = parser.add_argument_group("selecting records (globs; repeat a flag to allow several)")
    select.add_argument("--checkpoint", action="append", metavar="PATTERN",
                        help="checkpoint name, path, tag or sha256 prefix")
    select.add_argument("--protocol", action="append", metavar="PATTERN", help="knn, linear, transfer")
    select.add_argument("--dataset", action="append", metavar="PATTERN", help="dataset name, e.g. shapes, voc07")
    select.add_argument("--tag", action="append", metavar="PATTERN", help="a tag of the record")
    parser.add_argument("--linear-epoch", default="best", choices=("best", "last"),
                        help="Table 4's linear columns: the best epoch's top-1, as main_lincls reports it "
                             "(best_acc1, model_best.pth.tar; default), or the last epoch's")
    pivot = parser.add_argument_group("custom pivot (--layout pivot)")
    pivot.add_argument("--rows", type=_csv_list, default=["name", "epochs"],
                       help="comma-separated fields for rows (default: name,epochs); fields: name, "
                            "epochs, protocol, labels (low-shot), dataset, metric")
    pivot.add_argument("--columns", type=_csv_list, default=["dataset", "protocol", "metric"],
                       help="comma-separated fields for columns (default: dataset,protocol,metric)")
    pivot.add_argument("--metrics", type=_csv_list, default=None, help="only these metrics, e.g. top1,top5")
    parser.add_argument("--bold-threshold", type=float, default=0.5,
                        help="bold the entries within this much below the column's best (default: 0.5)")
    parser.add_argument("--no-bold", action="store_true", help="bold nothing")
    parser.add_argument("--decimals", type=int, default=1, help="decimals shown (default: 1)")
    parser.add_argument("--reference", default="auto", choices=("auto", "all", "none"),
                        help="published rows to add: auto = those on datasets and protocols you have "
                             "records for (default), all, none")
    parser.add_argument("--reference-file", action="append", default=[], metavar="CSV",
                        help="your own published-numbers CSV (format: configs/reference/README.md)")
    parser.add_argument("--output", metavar="PREFIX",
                        help="write PREFIX.md/.tex/.csv/.html (PREFIX-table4.* etc. when several tables)")
    parser.add_argument("--formats", type=_csv_list, default=["md", "tex", "csv", "html"],
                        help="formats to write with --output (default: md,tex,csv,html)")
    parser.set_defaults(func=run)


def load_sources(sources: list[str]) -> list[dict]:
    """Records from databases, JSON record files and folders holding a results database."""
    from simsiam_eval.errors import UserError
    from simsiam_eval.results.store import read_json_records, read_records

    records = []
    for source in sources or [DEFAULT_DB_NAME]:
        path = Path(source)
        if path.is_dir():
            path = path / DEFAULT_DB_NAME
        if path.suffix == ".json":
            records += read_json_records([path])
        elif path.is_file():
            records += read_records(path)
        else:
            raise UserError(f"no results found at {source} (give a results database, a record JSON file "
                            f"or a folder holding {DEFAULT_DB_NAME})")
    return records


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.errors import UserError
    from simsiam_eval.report.build import comparison_tables
    from simsiam_eval.report.render import to_markdown, write_table
    from simsiam_eval.results.store import select_records

    records = select_records(load_sources(args.sources), protocol=args.protocol, checkpoint=args.checkpoint,
                             dataset=args.dataset, tag=args.tag)
    if not records:
        raise UserError("no records match the selection")
    threshold = None if args.no_bold else args.bold_threshold
    tables = comparison_tables(records, args.layout, args.reference, args.reference_file,
                               args.rows, args.columns, args.metrics, args.linear_epoch)
    if not tables:
        raise UserError("the selected records have no kNN, linear or transfer metrics; try --layout pivot")
    for name, table in tables.items():
        print(f"## {table.title or name}\n")
        print(to_markdown(table, threshold, args.decimals))
        if args.output:
            prefix = args.output if len(tables) == 1 else f"{args.output}-{name}"
            for path in write_table(table, prefix, args.formats, threshold, args.decimals):
                print(f"wrote {path}")
    return 0
