"""Seed lists as people write them (``0-63``, ``1,5,9``) and back.

Seeds are uint32, as in NVlabs/edm's generate.py (each image's generator is seeded with the seed itself), and
one command handles at most ``MAX_SEEDS`` of them: the list is built in memory, and a range such as
``0-4000000000`` is a typo or a job for several runs, not one.
"""

from __future__ import annotations

import re
from typing import Iterable

from loracli.errors import UserError

MAX_SEED = 2**32 - 1
MAX_SEEDS = 1_000_000  # 20x the FID protocol's 50,000 images; a list of them takes about 40 MB
_PART = re.compile(r"^(\d+)\s*(?:-\s*(\d+))?$")


def check_count(count: int, what: str = "seeds") -> int:
    """Refuse more than ``MAX_SEEDS`` images in one command, saying why and what to do instead."""
    if count > MAX_SEEDS:
        raise UserError(f"That is {count:,} {what}; one command makes at most {MAX_SEEDS:,} images (the FID protocol "
                        f"needs 50,000), so split the range over several runs.")
    return count


def parse_int_list(text: str, what: str = "seeds") -> list[int]:
    """``"0-63"``, ``"1,5,9"`` or ``"0-9,20-29"`` -> a list of integers in ``0..2**32-1``, in order.

    The count is checked against ``MAX_SEEDS`` before any list is built.
    """
    ranges: list[tuple[int, int]] = []
    for part in (p.strip() for p in text.split(",")):
        match = _PART.match(part)
        if part.startswith("-") and part[1:2].isdigit():
            raise UserError(f"{what.capitalize()} are whole numbers from 0 to {MAX_SEED} (uint32, as in EDM); "
                            f"'{part}' is negative.")
        if not match:
            raise UserError(f"Cannot read {what} '{text}'; use a range like 0-63 or a list like 1,5,9.")
        start, stop = int(match[1]), int(match[2] or match[1])
        if stop < start:
            raise UserError(f"Cannot read {what} '{text}': the range {part} runs backwards; write {stop}-{start}.")
        if stop > MAX_SEED:
            raise UserError(f"{what.capitalize()} are whole numbers from 0 to {MAX_SEED} (uint32, as in EDM); "
                            f"{stop} is too large.")
        ranges.append((start, stop))
    check_count(sum(stop - start + 1 for start, stop in ranges), what)
    return [value for start, stop in ranges for value in range(start, stop + 1)]


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
