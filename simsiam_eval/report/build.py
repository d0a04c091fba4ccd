"""From records to finished tables: measurements, published rows, layout."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from simsiam_eval.errors import UserError
from simsiam_eval.report.measurements import measurements, with_reference
from simsiam_eval.report.tables import TABLE4_COLUMNS, Table, custom_pivot, table4, table5

LAYOUTS = ("auto", "table4", "table5", "pivot")


def comparison_tables(records: Iterable[dict], layout: str = "auto", reference: str = "auto",
                      reference_files: Sequence[str | Path] = (), rows: Sequence[str] = ("name", "epochs"),
                      columns: Sequence[str] = ("dataset", "protocol", "metric"),
                      metrics: Sequence[str] | None = None, linear_epoch: str = "best") -> dict[str, Table]:
    """Tables by layout name. ``auto``: Table 4 if there are kNN/linear records, Table 5 if there are
    transfer records. ``linear_epoch``: Table 4's linear columns show the ``best`` epoch (main_lincls)
    or the ``last``."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    long = with_reference(measurements(records), reference, reference_files)
    if layout == "pivot":
        return {"pivot": custom_pivot(long, list(rows), list(columns), list(metrics or []))}
    if layout == "auto":
        protocols = set(long.loc[~long["published"].astype(bool), "protocol"]) if not long.empty else set()
        wanted = [name for name, present in (("table4", protocols & set(TABLE4_COLUMNS)),
                                              ("table5", "transfer" in protocols)) if present]
    else:
        wanted = [layout]
    builders = {"table4": lambda frame: table4(frame, linear_epoch), "table5": table5}
    return {name: builders[name](long) for name in wanted}
