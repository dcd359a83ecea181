"""Listing tables that fit the terminal: ids whole, other columns wrap, ``--wide`` for more.

An id column keeps its width, so an id can be copied whole from a table at any width the
ids themselves fit in; the other columns give way, wrapping between words and then folding
inside them. A listing shows at 80 columns what one needs to act on a row and, with
``--wide``, every column at its natural width; ``--json`` prints the whole response.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from google.protobuf.json_format import MessageToDict
from rich import box
from rich.cells import cell_len
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console

__all__ = ["AsJson", "Column", "Wide", "echo_json", "fit", "listing", "minute", "print_table"]

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Wide = Annotated[
    bool, typer.Option("--wide", help="Show every column, even where lines get longer than 80.")
]

# Columns stand apart by a padding cell either side of a blank rule; the edges have none.
_GAP = 3


@dataclass(frozen=True)
class Column:
    """A listing's column.

    Attributes:
        header: Its heading.
        ident: It holds ids, kept whole on one line.
        wide: Shown only with ``--wide``.
        justify: ``left``, or ``right`` for numbers.
    """

    header: str
    ident: bool = False
    wide: bool = False
    justify: Literal["left", "right"] = "left"


def _plain(cell: Any) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _widest_line(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def _widest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)


def _level(natural: list[int], floor: list[int], room: int) -> list[int]:
    """Cut the widest columns down to one level, none below its floor, to fit ``room``.

    Narrow columns keep their width; the floors come back when even they do not fit.
    """

    def at(level: int) -> list[int]:
        return [min(n, max(f, level)) for n, f in zip(natural, floor, strict=True)]

    low, high = 0, max(natural, default=0)
    while low < high:  # the highest level that fits
        middle = (low + high + 1) // 2
        if sum(at(middle)) <= room:
            low = middle
        else:
            high = middle - 1
    return at(low)


def fit(cells: Sequence[Sequence[str]], ident: Sequence[bool], width: int) -> list[int] | None:
    """Column widths (without padding) that fit ``width``; ``None`` when it all fits as it is.

    Args:
        cells: Each column's texts, header first.
        ident: Which columns hold ids.
        width: The terminal's width.

    Returns:
        The widths. Other columns give way first, down to their longest word (they wrap
        between words), then below it (they fold); ids fold only when nothing else helps.
    """
    natural = [max(1, *(_widest_line(c) for c in column)) for column in cells]
    room = width - _GAP * (len(cells) - 1)
    if sum(natural) <= room:
        return None
    words = [max(1, *(_widest_word(c) for c in column)) for column in cells]
    ids = [n if i else 1 for n, i in zip(natural, ident, strict=True)]
    floors = ([max(i, w) for i, w in zip(ids, words, strict=True)], ids, [1] * len(cells))
    for floor in floors:
        widths = _level(natural, floor, room)
        if sum(widths) <= room:
            break
    return widths


def listing(
    title: str | None,
    columns: Sequence[Column],
    rows: Iterable[Sequence[Any]],
    *,
    wide: bool = False,
    width: int | None = None,
) -> Table:
    """A table of ``rows``, each with a value (a string or ``Text``) for every column.

    Args:
        title: Shown above the table.
        columns: The columns, ``wide`` ones included.
        rows: The rows.
        wide: Show the ``wide`` columns too, at their natural width.
        width: The terminal's width, which the table then fits with its ids whole.

    Returns:
        The table, for ``print_table`` or a larger renderable.
    """
    chosen = [k for k, column in enumerate(columns) if wide or not column.wide]
    shown = [columns[k] for k in chosen]
    kept = [[row[k] for k in chosen] for row in rows]
    widths = None
    if width is not None and not wide:
        cells = [[c.header, *(_plain(row[k]) for row in kept)] for k, c in enumerate(shown)]
        widths = fit(cells, [c.ident for c in shown], width)
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for k, column in enumerate(shown):
        table.add_column(
            column.header,
            width=None if widths is None else widths[k],
            overflow="fold",
            justify=column.justify,
        )
    for row in kept:
        table.add_row(*row)
    return table


def print_table(console: Console, table: Table, *, wide: bool = False) -> None:
    """Print ``table`` to fit the terminal or, with ``wide``, at its natural width."""
    if not wide:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update_width(100_000), table).maximum
    terminal = console.width
    console.width = max(terminal, natural)
    try:
        console.print(table)
    finally:
        console.width = terminal


def echo_json(message: Message | dict[str, Any] | list[Any]) -> None:
    """Print a response (or plain data) as indented JSON, with the contract's field names."""
    data = (
        message
        if isinstance(message, dict | list)
        else MessageToDict(message, preserving_proto_field_name=True)
    )
    typer.echo(json.dumps(data, indent=2))


def minute(stamp: Timestamp) -> str:
    """A time to the minute in UTC, ``2026-03-01 14:05``; empty when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return f"{stamp.ToDatetime(tzinfo=UTC):%Y-%m-%d %H:%M}"
