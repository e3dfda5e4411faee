"""Append the rows of saved JSON lines to the results log of docs/benchmarks.md.

    python benchmarks/record.py /path/to/bench.jsonl [more.jsonl ...] [--docs docs/benchmarks.md]

For figures measured elsewhere: ``gpu_all.sh`` writes every script's JSON line to ``$OUT/bench.jsonl`` on the
GPU machine (whose copy of the repository is thrown away); run this on the files that came back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import benchlib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--docs", type=Path, default=benchlib.DOCS)
    args = p.parse_args()
    count = 0
    for path in args.files:
        for line in path.read_text().splitlines():
            if line.strip():
                benchlib.append_row(args.docs, benchlib.format_row(json.loads(line)))
                count += 1
    print(f"appended {count} row(s) to {args.docs}")


if __name__ == "__main__":
    main()
