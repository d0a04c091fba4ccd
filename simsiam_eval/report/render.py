"""Write a :class:`~simsiam_eval.report.tables.Table` as markdown, LaTeX, CSV or HTML (pandas does the layout)."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from simsiam_eval.atomic import atomic_write_text
from simsiam_eval.errors import UserError
from simsiam_eval.report.tables import FIELD_TITLES, Table, best_mask, cell_texts, tidy

FORMATS = {"md": "markdown", "tex": "latex", "csv": "csv", "html": "html"}
BOLD_CSS = "font-weight: bold"


def _titled(frame: pd.DataFrame) -> pd.DataFrame:
    """Rename the index levels to readable titles (``name`` -> ``Method``)."""
    frame = frame.copy()
    frame.index = frame.index.set_names([FIELD_TITLES.get(n, n) for n in frame.index.names])
    frame.columns = frame.columns.set_names([FIELD_TITLES.get(n, n) for n in frame.columns.names])
    return frame


def _sources_lines(table: Table) -> list[str]:
    """``names: source`` per cited source (published rows that share a source are listed together)."""
    names_by_source: dict[str, list[str]] = {}
    for name, source in table.sources.items():
        names_by_source.setdefault(source, []).append(name)
    return [f"{', '.join(names)}: {source}" for source, names in names_by_source.items()]


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape_latex(text: str) -> str:
    """Escape a caption (cells and headers are escaped by pandas' Styler)."""
    return text.translate(str.maketrans(_LATEX_SPECIALS))


def _flat_columns(columns: pd.Index) -> list[str]:
    if isinstance(columns, pd.MultiIndex):
        return [" ".join(str(part) for part in col if str(part)) for col in columns]
    return [str(c) for c in columns]


def to_markdown(table: Table, threshold: float | None = 0.5, decimals: int = 1) -> str:
    """A GitHub markdown table (bold as ``**...**``), then the sources of published rows."""
    if table.empty:
        return "(no matching records)\n"
    texts = cell_texts(table, decimals)
    texts = texts.mask(best_mask(table, threshold, decimals) & texts.ne(""), "**" + texts + "**")
    texts.columns = _flat_columns(texts.columns)
    text = _titled(texts).reset_index().to_markdown(index=False, disable_numparse=True) + "\n"
    notes = table.notes + _sources_lines(table)
    if threshold is not None:
        notes.insert(0, f"Mean ± sample std over n trials; bold: within {threshold:g} of the column's best.")
    return text + "".join(f"\n{line}" for line in notes) + ("\n" if notes else "")


def _styler(table: Table, threshold: float | None, decimals: int) -> pd.io.formats.style.Styler:
    bold = best_mask(table, threshold, decimals)
    texts = _titled(cell_texts(table, decimals))
    bold.index, bold.columns = texts.index, texts.columns
    return texts.style.apply(lambda _: bold.replace({True: BOLD_CSS, False: ""}), axis=None)


def to_latex(table: Table, threshold: float | None = 0.5, decimals: int = 1) -> str:
    """A booktabs ``table`` environment (bold as ``\\bfseries``; ``±`` as ``$\\pm$``)."""
    styler = _styler(table, threshold, decimals).format(escape="latex").format_index(escape="latex", axis=0)
    styler = styler.format_index(escape="latex", axis=1)
    caption = ". ".join([table.title, *table.notes] if table.title else table.notes)
    caption += "" if not table.sources else ". Published rows: " + "; ".join(_sources_lines(table))
    latex = styler.to_latex(hrules=True, sparse_index=False, convert_css=True, multicol_align="c", environment="table",
                            caption=escape_latex(caption) if caption else None,
                            position_float="centering")
    return latex.replace("±", r"$\pm$")


def to_html(table: Table, threshold: float | None = 0.5, decimals: int = 1) -> str:
    """An HTML table (bold by CSS), sources in the caption."""
    styler = _styler(table, threshold, decimals)
    caption = " ".join([table.title, *table.notes, *(f"[{line}]" for line in _sources_lines(table))]).strip()
    if caption:
        styler = styler.set_caption(html.escape(caption))
    return styler.to_html()


def to_csv(table: Table, threshold: float | None = 0.5, decimals: int = 1) -> str:
    """One row per cell (row keys, column keys, mean, std, n, bold, source): for further processing."""
    return tidy(table, threshold, decimals).to_csv(index=False)


WRITERS = {"md": to_markdown, "tex": to_latex, "csv": to_csv, "html": to_html}


def write_table(table: Table, prefix: str | Path, formats=tuple(FORMATS), threshold: float | None = 0.5,
                decimals: int = 1) -> list[Path]:
    """Write ``prefix.md``, ``prefix.tex``, ``prefix.csv``, ``prefix.html`` (those asked for)."""
    written = []
    for fmt in formats:
        if fmt not in WRITERS:
            raise UserError(f"unknown table format {fmt!r}; choose from {', '.join(WRITERS)}")
        path = Path(f"{prefix}.{fmt}")
        atomic_write_text(WRITERS[fmt](table, threshold, decimals), path)
        written.append(path)
    return written
