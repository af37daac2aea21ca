"""Formatting of figures for narrow terminals (every cell fits 80 columns)."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def number(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    """A rate (pass@k, accuracy) as `soar status` shows it: "30.0%" ("-" when missing)."""
    return "-" if value is None else f"{value:.1%}"


def ratio(correct: int, total: int) -> str:
    """Student success as "3/8 38%" ("-" when never tried)."""
    return f"{correct}/{total} {correct / total:4.0%}" if total else "-"


def flag(value) -> str:
    return {None: "?", 0: "no", 1: "yes"}.get(value, str(value))


def teacher_answer(verified) -> str:
    """A teacher item's `answer_verified` in words (None: the domain has no solver to check it)."""
    return {None: "unchecked", 0: "wrong", 1: "right"}.get(verified, str(verified))


def clock_time(timestamp: str | None) -> str:
    """Local wall-clock time of a stored ISO timestamp (HH:MM:SS)."""
    if not timestamp:
        return "-"
    return datetime.fromisoformat(timestamp).astimezone().strftime("%H:%M:%S")


def short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cell(text, width: int = 200) -> Text:
    """Stored text for a DataTable cell: shortened, and never parsed as markup."""
    return Text(short(None if text is None else str(text), width))
