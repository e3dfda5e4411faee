"""Seed lists as people write them (``0-63``, ``1,5,9``) and back."""

from __future__ import annotations

from typing import Iterable

from loracli.errors import UserError


def parse_int_list(text: str, what: str = "seeds") -> list[int]:
    """``"0-63"``, ``"1,5,9"`` or ``"0-9,20-29"`` -> a list of non-negative integers, in order."""
    values: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, sep, hi = part.partition("-")
            start, stop = int(lo), int(hi) if sep else int(lo)
            if start < 0 or stop < start:
                raise ValueError
            values.extend(range(start, stop + 1))
    except ValueError:
        raise UserError(f"Cannot read {what} '{text}'; use a range like 0-63 or a list like 1,5,9.") from None
    if not values:
        raise UserError(f"No {what} given in '{text}'.")
    return values


def format_int_list(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``, the inverse of ``parse_int_list`` (order kept)."""
    parts: list[str] = []
    run: list[int] = []
    for v in values:
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [v]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)
