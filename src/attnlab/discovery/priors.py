"""Exclusion files: the links a user rules out, by column name (spec ``time_series.md`` D.3, D.5).

Two formats, chosen by the file's suffix:

* **CSV** (``.csv``): a header with ``cause`` and ``effect`` columns (others, such as ``lag``, ``score`` and ``seeds``
  of a round's ``edges.csv``, are ignored, so lines can be copied from it), then one excluded link per row.
* **JSON** (``.json``): a list of ``{"cause": ..., "effect": ...}`` objects or ``[cause, effect]`` pairs, or an object
  ``{"exclude": <that list>}``.

An exclusion means "cause does not cause effect at any lag". Refused with a ``ValueError`` naming the file and the
row: a name that is not a column of the series, a variable excluded from its own past, a malformed row.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from attnlab.tasks.causal_discovery import check_exclusion_pairs

__all__ = ["read_exclusions", "exclusions_csv"]


def read_exclusions(path: str | Path, columns: Sequence[str]) -> list[list[str]]:
    """The ``[cause, effect]`` pairs of exclusion file ``path`` (CSV or JSON), checked against ``columns``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"exclusion file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8").lstrip("\ufeff")
    if p.suffix.lower() == ".json":
        try:
            d: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        if isinstance(d, dict):
            if set(d) != {"exclude"}:
                raise ValueError(f"{p}: a JSON object must have the single key 'exclude', got {sorted(d)}")
            d = d["exclude"]
        if not isinstance(d, list):
            raise ValueError(f"{p}: expected a list of {{'cause', 'effect'}} objects or [cause, effect] pairs")
        pairs = []
        for k, e in enumerate(d):
            if isinstance(e, dict):
                if "cause" not in e or "effect" not in e:
                    raise ValueError(f"{p}: entry {k} must have 'cause' and 'effect', got {e!r}")
                pairs.append([e["cause"], e["effect"]])
            else:
                pairs.append(e)
        return check_exclusion_pairs(pairs, columns, where=str(p))
    if p.suffix.lower() != ".csv":
        raise ValueError(f"exclusion file {str(p)!r}: the name must end in .csv or .json")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if "cause" not in header or "effect" not in header:
        raise ValueError(f"{p}: the header must name the columns 'cause' and 'effect', got {','.join(header)!r}")
    ci, ei = header.index("cause"), header.index("effect")
    pairs, lines = [], []
    for fields in reader:
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) <= max(ci, ei):
            raise ValueError(f"{p}, line {reader.line_num}: expected {len(header)} fields, got {len(fields)}")
        pairs.append([fields[ci], fields[ei]])
        lines.append(f"{p}, line {reader.line_num}")
    return check_exclusion_pairs(pairs, columns, where=str(p), labels=lines)


def exclusions_csv(pairs: Sequence[Sequence[str]]) -> str:
    """``pairs`` as the text of an exclusion CSV (``cause,effect``; names quoted where CSV needs it)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["cause", "effect"])
    w.writerows([c, e] for c, e in pairs)
    return buf.getvalue()
