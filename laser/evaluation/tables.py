"""Result tables: rows of flat dicts written as Markdown, CSV and JSON; the seed summary that averages a sweep's
seeds of one configuration and scene (mean and spread); and the pivot that turns a sweep (one row per configuration
and scene) into a comparison table (one row per configuration, one column per scene).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

Value = str | int | float | None
Row = dict[str, Value]


def _columns(rows: list[Row]) -> list[str]:
    """Every key of every row, in order of first appearance."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _averaged(rows: list[Row], column: str) -> bool:
    """Whether a column is a measurement to average: all its present values are floats.

    Integers are left alone on purpose: in our rows they are steps, seeds and counts, whose mean means nothing.
    """
    values = [row.get(column) for row in rows if row.get(column) is not None]
    return bool(values) and all(isinstance(v, float) for v in values)


def mean_row(rows: list[Row]) -> Row:
    """The mean of every float column over the rows that have it, labelled "mean" in the first other column."""
    columns = _columns(rows)
    averaged = [c for c in columns if _averaged(rows, c)]
    mean: Row = {c: None for c in columns}
    label = next((c for c in columns if c not in averaged), None)
    if label is not None:
        mean[label] = "mean"
    for column in averaged:
        values = [row[column] for row in rows if row.get(column) is not None]
        mean[column] = math.fsum(values) / len(values)
    return mean


def _cell(column: str, value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if column.endswith("_pct") else f"{value:.4f}"
    # A pipe in a run label (Hydra overrides can hold one) would split the Markdown cell.
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[Row]) -> str:
    """A Markdown table: floats to 4 decimals (1 for columns named ``*_pct``), empty cells for missing values,
    numeric columns right-aligned."""
    columns = _columns(rows)
    numeric = {c for c in columns if all(isinstance(row.get(c), (int, float, type(None))) for row in rows)}
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "".join("---:|" if c in numeric else "---|" for c in columns)]
    lines += ["| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv_text(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``, so a reader (or a crash)
    never sees half a table."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_tables(rows: list[Row], out_dir: str | Path, name: str = "results", with_mean: bool = True) -> str:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.json`` for rows of flat dicts; return the Markdown.

    With ``with_mean`` and more than one row, a last row holds the mean of every float column (see ``mean_row``).
    CSV and JSON keep full precision (missing values: empty / null); only the Markdown is rounded.
    """
    if not rows:
        raise ValueError("no rows to write")
    table = rows + [mean_row(rows)] if with_mean and len(rows) > 1 else list(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(table)
    write_atomic(out_dir / f"{name}.md", markdown)
    write_atomic(out_dir / f"{name}.csv", _csv_text(table))
    write_atomic(out_dir / f"{name}.json", json.dumps(table, indent=2) + "\n")
    return markdown


def pivot(rows: list[Row], row_key: str, column_key: str, value_key: str) -> list[Row]:
    """One row per ``row_key`` value, one column per ``column_key`` value holding ``value_key``, then ``mean``
    (over the cells present) and ``n_<column_key>s`` (how many cells that mean averages).

    E.g. a sweep's rows ``{"configuration", "scene", "miou"}`` -> ``{"configuration", <scene>..., "mean",
    "n_scenes"}``. Rows and columns keep their order of first appearance; a missing cell is ``None``, so a mean
    over fewer scenes is visible. Two rows for the same cell raise: average seeds before pivoting.
    """
    cells: dict[tuple[Value, Value], float] = {}
    for row in rows:
        key = (row[row_key], row[column_key])
        if key in cells:
            raise ValueError(f"two rows for {row_key}={key[0]!r}, {column_key}={key[1]!r}")
        cells[key] = float(row[value_key])
    count_key = f"n_{column_key}s"
    labels = list(dict.fromkeys(label for label, _ in cells))
    columns = list(dict.fromkeys(str(column) for _, column in cells))
    clashes = {row_key, "mean", count_key} & set(columns)
    if clashes:
        raise ValueError(f"{column_key} values {sorted(clashes)} clash with the table's own columns")
    table = []
    for label in labels:
        present = {str(column): value for (other, column), value in cells.items() if other == label}
        table.append({row_key: label, **{c: present.get(c) for c in columns},
                      "mean": math.fsum(present.values()) / len(present), count_key: len(present)})
    return table


def seed_summary(rows: list[Row], keys: tuple[str, ...], value_key: str) -> list[Row]:
    """One row per distinct ``keys`` values: ``value_key``'s mean, min, max and standard deviation over the rows
    that share them (a configuration's seeds), and ``n_seeds``. Keys keep their order of first appearance."""
    groups: dict[tuple[Value, ...], list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(float(row[value_key]))
    table = []
    for key, values in groups.items():
        mean = math.fsum(values) / len(values)
        spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        table.append({**dict(zip(keys, key)), value_key: mean, "min": min(values), "max": max(values), "std": spread,
                      "n_seeds": len(values)})
    return table
