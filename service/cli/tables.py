"""How the CLI prints tables: a rich table on a terminal, plain tab-separated lines anywhere else.

Piped output (stdout is not a terminal: a pipe, a file, a test's runner) is for ``grep``, ``awk``
and ``cut``: a header line of column names, then one line per row, fields separated by one tab,
every value whole, no box drawing, no colour. An empty value prints ``-`` so that awk's
whitespace splitting keeps the columns in place; a tab or a newline inside a value is written
``\\t`` / ``\\n`` so a row stays one line. A record view (``status``) prints ``name<TAB>value``
lines, without a header. When there is nothing to list, piped output is the header alone and
the "no ..." note goes to stderr.

On a terminal, identifier columns (job and worker ids, hosts, plugin, action and queue names)
are never cut or ellipsized: each is kept on one line at its full width while the terminal has
room for it, and folded (wrapped at any character, still complete) when it has not. The other
columns wrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "ident", "piped", "print_fields", "print_table"]

# Per column on a terminal: a space of padding and the (blank) divider of box.SIMPLE_HEAD.
_COLUMN_OVERHEAD = 2
# A column no wider than this (a pid, a state, a count, a version) is never wrapped: splitting
# "succeeded" over two lines saves little room and reads badly.
_SHORT_WIDTH = 10
# Room kept for each wrapping column when deciding whether an identifier stays on one line: on
# 80 columns a worker id of ~30 characters stays whole in the 7-column workers table.
_MIN_OTHER_WIDTH = 5


@dataclass(frozen=True)
class Column:
    """A table column: its header, and whether it holds identifiers (never cut)."""

    header: str
    identifier: bool = False


def ident(header: str) -> Column:
    """An identifier column (a job id, a worker id, a name someone will type or grep for)."""
    return Column(header, identifier=True)


def piped(console: Console) -> bool:
    """True when ``console`` does not write to a terminal: print the plain format.

    The file's own ``isatty``, not rich's ``is_terminal``: ``FORCE_COLOR`` in the environment
    (common in CI) must not put box drawing into a pipe.
    """
    isatty = getattr(console.file, "isatty", None)
    return not (callable(isatty) and isatty())


def print_table(
    console: Console,
    columns: Sequence[Column | str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    empty: str | None = None,
    notes: Console | None = None,
) -> None:
    """Print ``rows`` under ``columns``: plain lines when piped, a rich table on a terminal.

    With no rows and an ``empty`` note, a terminal shows the note alone; piped output is the
    header line, and the note goes to ``notes`` (stderr) so it is not read as a row.
    """
    specs = [c if isinstance(c, Column) else Column(c) for c in columns]
    if piped(console):
        _write_plain(console, [[c.header for c in specs], *rows])
        if not rows and empty and notes is not None:
            notes.print(empty, highlight=False)
    elif not rows and empty:
        console.print(empty, highlight=False)
    else:
        console.print(_rich_table(console, specs, rows, title))


def print_fields(console: Console, fields: Sequence[tuple[str, str]]) -> None:
    """Print a record as ``name value`` pairs: ``name<TAB>value`` lines when piped."""
    if piped(console):
        _write_plain(console, fields)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(Text(name), Text(value))
    console.print(table)


def _write_plain(console: Console, lines: Sequence[Sequence[str]]) -> None:
    # Straight to the file: rich would expand the tabs and wrap at the console's width.
    for fields in lines:
        print("\t".join(_plain(value) for value in fields), file=console.file)
    console.file.flush()


def _plain(value: str) -> str:
    return value.replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n") or "-"


def _rich_table(console: Console, specs: Sequence[Column], rows: Sequence[Sequence[str]], title: str | None) -> Table:
    # No outer edge and padding on the right only: the columns' gaps are all the overhead there is.
    table = Table(*(c.header for c in specs), title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    widths = [max([cell_len(spec.header), *(cell_len(row[i]) for row in rows)]) for i, spec in enumerate(specs)]
    room = console.width - _COLUMN_OVERHEAD * len(specs)
    idents = []
    for index, (column, spec) in enumerate(zip(table.columns, specs, strict=True)):
        column.overflow = "fold"  # a word too long for its column is split over lines, never ellipsized
        if spec.identifier:
            idents.append(index)
        elif widths[index] <= _SHORT_WIDTH:
            column.no_wrap = True
            room -= widths[index]
        else:
            room -= _MIN_OTHER_WIDTH
    _fit_identifiers(table, [(i, widths[i]) for i in idents], room)
    for row in rows:
        table.add_row(*(Text(value) for value in row))
    return table


def _fit_identifiers(table: Table, idents: Sequence[tuple[int, int]], room: int) -> None:
    """Keep identifiers on one line, in column order, while ``room`` lasts; fold the rest."""
    for rank, (index, width) in enumerate(idents):
        later = sum(min(w, _MIN_OTHER_WIDTH) for _, w in idents[rank + 1 :])
        if width > room - later:
            # As wide as the room allows, folded over as few lines as that gives; later ones fold.
            table.columns[index].width = max(room - later, _MIN_OTHER_WIDTH)
            return
        # Whole on one line: rich shrinks the wrapping columns instead.
        table.columns[index].no_wrap = True
        room -= width
