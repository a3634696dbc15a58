"""Charts drawn on the server as inline SVG: no script, no CDN, nothing for the
page's Content-Security-Policy to refuse.

This module computes a chart's geometry (bars, points, ticks, legend) from figures
per time bucket and group; `templates/charts/chart.html` draws it, escaped like
every other template. The SVG scales to its box (a viewBox); colours come from the
stylesheet's `.series-N` classes (light and dark themes); every mark carries its
figures as `data-` attributes and a `<title>` (the tooltip, and what a screen
reader says), and the chart a `<title>` and a `<desc>` that sum it up.

Groups keep their colour across the charts of a page: `palette` ranks them once
and `regroup` folds everything past the first `MAX_SERIES` into `other`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

MAX_SERIES = 6
"""Groups drawn in their own colour; the rest are summed as `other`."""
OTHER = "other"
HOUR = 3600
DAY = 86400

Window = Literal["hour", "day"]
Format = Callable[[float], str]


@dataclass(frozen=True, slots=True)
class Size:
    """A chart's box (SVG user units) and its plot area's margins."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    x_labels: int  # at most this many labels under the x axis


WIDE = Size(width=560, height=200, left=54, right=8, top=10, bottom=22, x_labels=7)
SMALL = Size(width=288, height=92, left=44, right=4, top=8, bottom=18, x_labels=4)


@dataclass(frozen=True, slots=True)
class Mark:
    """One bar (segment) or one point of a line."""

    key: str
    series: str  # the colour class: `0`...`5` or `other`
    ts: int
    value: float
    x: float
    y: float
    w: float
    h: float
    text: str  # its <title>


@dataclass(frozen=True, slots=True)
class Path:
    """One run of a line through consecutive buckets that have a value."""

    key: str
    series: str
    points: str  # "x,y x,y ..."


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis label at `at` (y for the value axis, x for the time axis)."""

    at: float
    label: str
    ts: int | None = None


@dataclass(frozen=True, slots=True)
class Legend:
    """A group's colour, name and total over the chart."""

    key: str
    label: str
    series: str
    total: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the template draws."""

    id: str
    title: str
    desc: str
    metric: str
    kind: Literal["bars", "lines"]
    size: Size
    marks: list[Mark]
    paths: list[Path]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[Legend]
    buckets: int
    total: float
    total_text: str

    @property
    def empty(self) -> bool:
        """Nothing to draw in the range."""
        return not self.marks

    @property
    def plot(self) -> tuple[float, float, float, float]:
        """The plot area: left, top, right, bottom."""
        return _plot(self.size)


# -- groups and their colours --------------------------------------------------------


def palette(ranked: Sequence[str], n: int = MAX_SERIES) -> dict[str, str]:
    """The colour class of each of the first `n` groups (others: `other`)."""
    out: dict[str, str] = {}
    for key in ranked:
        if key not in out and len(out) < n:
            out[key] = str(len(out))
    return out


def regroup(
    values: Mapping[str, Mapping[int, float]], colours: Mapping[str, str]
) -> dict[str, dict[int, float]]:
    """`values` by group, the groups without a colour summed under `other`."""
    out: dict[str, dict[int, float]] = {}
    for key, points in values.items():
        target = key if key in colours else OTHER
        line = out.setdefault(target, {})
        for ts, v in points.items():
            line[ts] = line.get(ts, 0) + v
    return out


def group_label(key: str) -> str:
    """How a group reads: an empty key is a figure without a name (an LLM call that
    failed before a model answered, a session of an unknown agent)."""
    return key if key else "(none)"


# -- time buckets --------------------------------------------------------------------


def buckets(since: int, until: int, window: Window) -> list[int]:
    """The bucket starts in `[since, until)`, `since` on a bucket edge."""
    step = HOUR if window == "hour" else DAY
    return list(range(since, until, step))


def when(ts: int, window: Window) -> str:
    """A bucket as a person reads it (UTC)."""
    t = datetime.fromtimestamp(ts, UTC)
    if window == "hour":
        return t.strftime("%Y-%m-%d %H:00 UTC")
    return t.strftime("%a %Y-%m-%d")


def _x_label(ts: int, window: Window) -> str:
    t = datetime.fromtimestamp(ts, UTC)
    if window == "hour" and t.hour:
        return t.strftime("%H:00")
    return t.strftime("%b %d")  # a day, or the hour a day starts


# -- scales --------------------------------------------------------------------------


def nice_step(value: float, *, integer: bool) -> float:
    """The smallest 'round' step (1, 2, 2.5 or 5 times a power of ten) at least
    `value`; whole numbers only for counts."""
    if value <= 0:
        return 1.0 if integer else 0.25
    power = 10.0 ** math.floor(math.log10(value))
    step = 10 * power
    for m in (1, 2, 5) if integer else (1, 2, 2.5, 5):
        if m * power >= value * (1 - 1e-9):
            step = m * power
            break
    return float(max(1, round(step))) if integer else step


def _y_axis(top_value: float, *, integer: bool, fixed: float | None) -> tuple[float, list[float]]:
    if fixed is not None:
        return fixed, [fixed * i / 4 for i in range(5)]
    step = nice_step(top_value / 4, integer=integer)
    return step * 4, [step * i for i in range(5)]


# -- charts --------------------------------------------------------------------------


def stacked_bars(
    *,
    id: str,
    title: str,
    metric: str,
    starts: Sequence[int],
    window: Window,
    values: Mapping[str, Mapping[int, float]],
    colours: Mapping[str, str],
    fmt: Format,
    integer: bool = False,
    fixed_top: float | None = None,
    size: Size = WIDE,
    subject: str = "",
) -> Chart:
    """Bars per time bucket, one segment per group stacked in the palette's order.

    Args:
        starts: the buckets' start times, in order (every bucket of the range).
        values: group -> bucket start -> value; buckets not in `starts` are ignored.
        colours: the groups' colour classes (`palette`); others are `other`.
        fmt: how a value reads (money, a count, a percentage).
        integer: counts: the axis steps are whole numbers.
        fixed_top: the axis' top (1.0 for a rate), else rounded up from the data.
        subject: what the bars are of, for the description ("by agent").
    """
    grouped = regroup(values, colours)
    index = {ts: i for i, ts in enumerate(starts)}
    totals = {k: sum(v for ts, v in line.items() if ts in index) for k, line in grouped.items()}
    order = [k for k in _order(grouped, colours) if totals[k] > 0]
    stacks = [sum(grouped[k].get(ts, 0) for k in order) for ts in starts]
    top, ticks = _y_axis(max(stacks, default=0), integer=integer, fixed=fixed_top)
    left, up, right, bottom = _plot(size)
    slot = (right - left) / max(1, len(starts))
    width = max(1.0, slot * 0.72)
    base = dict.fromkeys(starts, 0.0)
    marks = []
    for key in order:
        series = colours.get(key, OTHER)
        for ts, value in sorted(grouped[key].items()):
            if ts not in index or value <= 0:
                continue
            h = (bottom - up) * min(value, top) / top
            y = bottom - (bottom - up) * min(base[ts] + value, top) / top
            base[ts] += value
            x = left + index[ts] * slot + (slot - width) / 2
            marks.append(
                Mark(key, series, ts, value, _r(x), _r(y), _r(width), _r(h),
                     f"{group_label(key)} · {when(ts, window)}: {fmt(value)}")
            )  # fmt: skip
    total = sum(totals[k] for k in order)
    legend = [Legend(k, group_label(k), colours.get(k, OTHER), fmt(totals[k])) for k in order]
    return Chart(
        id=id, title=title, desc=_desc(title, subject, starts, window, legend, fmt(total)),
        metric=metric, kind="bars", size=size, marks=marks, paths=[],
        y_ticks=_y_ticks(ticks, top, size, fmt), x_ticks=_x_ticks(starts, window, size),
        legend=legend, buckets=len(starts), total=total, total_text=fmt(total),
    )  # fmt: skip


def rate_lines(
    *,
    id: str,
    title: str,
    metric: str,
    starts: Sequence[int],
    window: Window,
    hits: Mapping[str, Mapping[int, float]],
    of: Mapping[str, Mapping[int, float]],
    colours: Mapping[str, str],
    noun: tuple[str, str] = ("failed", "sessions"),
    size: Size = WIDE,
    subject: str = "",
) -> Chart:
    """A line per group of `hits / of` per bucket (0 to 100%), broken where a bucket
    has nothing to count; each point says both counts."""
    hit, total = regroup(hits, colours), regroup(of, colours)
    index = {ts: i for i, ts in enumerate(starts)}
    counted = {k: sum(v for ts, v in line.items() if ts in index) for k, line in total.items()}
    order = [k for k in _order(total, colours) if counted[k] > 0]
    left, up, right, bottom = _plot(size)
    slot = (right - left) / max(1, len(starts))
    marks, paths = [], []
    for key in order:
        series = colours.get(key, OTHER)
        run: list[str] = []
        for ts in starts:
            n = total[key].get(ts, 0)
            if n <= 0:
                if len(run) > 1:
                    paths.append(Path(key, series, " ".join(run)))
                run = []
                continue
            k = hit.get(key, {}).get(ts, 0)
            rate = k / n
            x = left + index[ts] * slot + slot / 2
            y = bottom - (bottom - up) * rate
            run.append(f"{_r(x)},{_r(y)}")
            text = f"{group_label(key)} · {when(ts, window)}: {percent(rate)} ({k:g} of {n:g} {noun[1]} {noun[0]})"  # noqa: E501
            marks.append(Mark(key, series, ts, round(rate, 6), _r(x), _r(y), 0, 0, text))
        if len(run) > 1:
            paths.append(Path(key, series, " ".join(run)))
    legend = []
    for key in order:
        n = sum(v for ts, v in total[key].items() if ts in index)
        k = sum(v for ts, v in hit.get(key, {}).items() if ts in index)
        legend.append(Legend(key, group_label(key), colours.get(key, OTHER), _rate_text(k, n)))
    all_n = sum(v for key in order for ts, v in total[key].items() if ts in index)
    all_k = sum(v for key in order for ts, v in hit.get(key, {}).items() if ts in index)
    rate = all_k / all_n if all_n else 0.0
    text = _rate_text(all_k, all_n)
    return Chart(
        id=id, title=title, desc=_desc(title, subject, starts, window, legend, text),
        metric=metric, kind="lines", size=size, marks=marks, paths=paths,
        y_ticks=_y_ticks([i / 4 for i in range(5)], 1.0, size, percent),
        x_ticks=_x_ticks(starts, window, size), legend=legend, buckets=len(starts),
        total=round(rate, 6), total_text=text,
    )  # fmt: skip


def percent(rate: float) -> str:
    """A share as a percentage: `0%`, `33.3%`, `100%`."""
    value = rate * 100
    return f"{value:.0f}%" if value == round(value) else f"{value:.1f}%"


def _rate_text(k: float, n: float) -> str:
    return percent(k / n) if n else "\u2013"


def _order(grouped: Mapping[str, Mapping[int, float]], colours: Mapping[str, str]) -> list[str]:
    """The palette's order, `other` last."""
    rank = {k: i for i, k in enumerate(colours)}
    return sorted(grouped, key=lambda k: (rank.get(k, len(rank)), k))


def _plot(size: Size) -> tuple[float, float, float, float]:
    return (size.left, size.top, size.width - size.right, size.height - size.bottom)


def _y_ticks(values: Sequence[float], top: float, size: Size, fmt: Format) -> list[Tick]:
    _, up, _, bottom = _plot(size)
    return [Tick(_r(bottom - (bottom - up) * v / top), fmt(v)) for v in values]


def _x_ticks(starts: Sequence[int], window: Window, size: Size) -> list[Tick]:
    if not starts:
        return []
    left, _, right, _ = _plot(size)
    slot = (right - left) / len(starts)
    every = max(1, math.ceil(len(starts) / size.x_labels))
    return [
        Tick(_r(left + i * slot + slot / 2), _x_label(ts, window), ts)
        for i, ts in enumerate(starts)
        if i % every == 0
    ]


def _desc(
    title: str,
    subject: str,
    starts: Sequence[int],
    window: Window,
    legend: list[Legend],
    total: str,
) -> str:
    if not starts:
        return f"{title}: no time range."
    span = f"{len(starts)} {window}s from {when(starts[0], window)}"
    head = f"{title}{' ' + subject if subject else ''}, {span}"
    if not legend:
        return f"{head}: no data in this range."
    parts = "; ".join(f"{entry.label} {entry.total}" for entry in legend)
    return f"{head}: {parts}. Total {total}."


def _r(value: float) -> float:
    return round(value, 2)
