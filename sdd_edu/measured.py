"""Measured figures, recorded once: the numbers the notebooks and pages quote come from ``assets/measured.json``.

    from sdd_edu.measured import value, quote
    value("h100.c_draft")          # 0.32
    quote("h100.speedup.staged")   # '1.28x', as the texts print it

A figure has a dotted key, ``GROUP.NAME`` (``h100.forward_ms.target_fast_1``); each group says where it was
measured (device, dtype, torch, command, date).  A quote in markdown (the notebooks' markdown cells, ``docs/*.md``,
the READMEs) carries an invisible HTML comment right after the number::

    c = 0.32<!-- measured: h100.c_draft -->  and  **1.28x<!-- measured: h100.speedup.staged -->**

It renders unchanged in JupyterLab, on GitHub and on the course site (MyST passes it through as an HTML comment).
``python -m sdd_edu.measured check`` lists the tags of every file and fails where the number before a tag is not
``quote(KEY)`` (or one of the other forms the entry lists under ``also``, such as a rounding), where a tag names
an unknown key, or where a sentence that mentions the H100 quotes a recorded figure's exact text untagged.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

from .errors import SddError

DATA = Path(__file__).parent / "assets" / "measured.json"
ROOT = Path(__file__).resolve().parents[1]
TAG = re.compile(r"<!-- measured: ([A-Za-z0-9_.]+) -->")
# a number as the texts print it: 463, 1,126, 0.32, 1.28x, 55%
NUMBER = re.compile(r"(?<![\w.,])\d+(?:,\d{3})*(?:\.\d+)?[x%]?(?![\d.,]*\d)")


@functools.lru_cache(maxsize=1)
def figures() -> dict[str, dict]:
    """Every figure by its dotted key: its value, format, other printed forms (``also``) and group (``group``)."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    out = {}
    for group, body in data.items():
        if group == "about":
            continue
        for name, entry in body["figures"].items():
            out[f"{group}.{name}"] = dict(entry, group=group)
    return out


def source(group: str) -> dict:
    """Where a group's figures were measured: device, dtype, torch, command, date (None where not recorded)."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    if group == "about" or group not in data:
        raise SddError(f"no measured group {group!r}; known: {', '.join(k for k in data if k != 'about')}")
    return data[group]["measured"]


def _entry(key: str) -> dict:
    entry = figures().get(key)
    if entry is None:
        close = [k for k in figures() if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]] or \
                [k for k in figures() if k.split(".", 1)[0] == key.split(".", 1)[0]]
        hint = f" (keys beside it: {', '.join(close[:6])}{', ...' if len(close) > 6 else ''})" if close else ""
        raise SddError(f"no measured figure {key!r} in {DATA.name}{hint}")
    return entry


def value(key: str) -> float:
    """The figure recorded under ``key`` (``h100.c_draft``), as measured."""
    return _entry(key)["value"]


def quote(key: str, fmt: str | None = None) -> str:
    """The figure as the texts print it (its entry's format, or ``fmt``): ``quote("h100.speedup.staged")`` '1.28x'."""
    entry = _entry(key)
    return (fmt or entry["format"]).format(entry["value"])


def quotes(key: str) -> list[str]:
    """Every form a text may print the figure in: its format first, then those listed under ``also``."""
    entry = _entry(key)
    return [quote(key)] + [quote(key, f) for f in entry.get("also", [])]


# ---- the check: tags in the texts -------------------------------------------------------------------------------

class Tag(NamedTuple):
    where: str   # "docs/gpu.md" or "tutorials/02_why_decoding_is_slow.ipynb cell 30"
    key: str
    printed: str  # the number right before the tag
    problem: str  # '' when it agrees


def texts(root: Path = ROOT) -> list[tuple[str, str]]:
    """(where, markdown) for every text that may quote a figure: the notebooks' markdown cells, docs/*.md and the
    READMEs.  Read as JSON, not with nbformat, so that the check stays quick."""
    out = []
    for path in sorted((root / "tutorials").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "markdown":
                src = cell["source"]
                out.append((f"{path.relative_to(root)} cell {i}", "".join(src) if isinstance(src, list) else src))
    for path in [root / "README.md", root / "tutorials" / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if path.exists():
            out.append((str(path.relative_to(root)), path.read_text(encoding="utf-8")))
    return out


def tags(where: str, text: str) -> list[Tag]:
    """The tags of one text, each with the number printed right before it and what is wrong with it ('' if none).
    A tag in code (an example of one, as in docs/testing.md) is not a tag: it shows as written."""
    out = []
    for m in TAG.finditer(_prose(text)):
        key, before = m.group(1), m.string[:m.start()]
        number = re.search(r"[\d,.]*\d[x%]?$", before)
        printed = number.group(0).lstrip(",.") if number else ""
        if key not in figures():
            problem = f"unknown key {key!r}"
        elif printed not in quotes(key):
            problem = f"printed {printed or 'no number'!r}, {DATA.name} has {' or '.join(map(repr, quotes(key)))}"
        else:
            problem = ""
        out.append(Tag(where, key, printed, problem))
    return out


def _prose(text: str) -> str:
    """The text without code (fenced blocks, inline spans), where a tag cannot stand."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", " ", text)


def _sentences(text: str) -> list[str]:
    """A rough split: paragraphs, table rows, then after '.', ';', ':', '?' or '!' followed by a space."""
    out = []
    for para in re.split(r"\n\s*\n", _prose(text)):
        for line in (para.split("\n") if para.lstrip().startswith("|") else [para]):
            out += re.split(r"(?<=[.;:?!])\s+", line)
    return out


def untagged(where: str, text: str, mention: str = "H100") -> list[str]:
    """The guard: in a sentence that mentions ``mention``, a number printed exactly as one of a recorded figure's
    forms (with a decimal point, an x or a %, or three digits or more: small integers are too common) but without
    a tag after it.  Each finding: 'WHERE: NUMBER (KEY?) untagged in "...sentence..."'.  A guard, not a parser."""
    forms: dict[str, list[str]] = {}
    for key in figures():
        for q in quotes(key):
            if re.search(r"[.x%]|\d{3}", q):
                forms.setdefault(q, []).append(key)
    out = []
    for sentence in _sentences(TAG.sub("\0", text)):  # a tag as one mark, so that its ':' splits no sentence
        if mention not in sentence:
            continue
        for m in NUMBER.finditer(sentence):
            if m.group(0) in forms and not sentence.startswith("\0", m.end()):
                keys = ", ".join(forms[m.group(0)][:3])
                excerpt = " ".join(sentence.replace("\0", "").split())[:160]
                out.append(f"{where}: {m.group(0)} ({keys}?) untagged in \"{excerpt}\"")
    return out


def check(root: Path = ROOT, out=None) -> int:
    """Print the tags of every text, per file, and every problem; the number of problems (0: all agree)."""
    out = out or sys.stdout
    per_file: dict[str, list[Tag]] = {}
    problems = [] if texts(root) else [f"no notebooks or docs under {root}: run the check in a clone of sdd-edu"]
    for where, text in texts(root):
        found = tags(where, text)
        per_file.setdefault(where.split(" cell ")[0], []).extend(found)
        problems += [f"{t.where}: <!-- measured: {t.key} --> {t.problem}" for t in found if t.problem]
        problems += untagged(where, text)
    for path, found in per_file.items():
        if found:
            print(f"{path}: {len(found)} tags", file=out)
            by_key: dict[str, list[str]] = {}
            for t in found:
                by_key.setdefault(t.key, []).append(t.printed)
            for key, printed in by_key.items():
                print(f"  {key:<44} {' '.join(dict.fromkeys(printed))}  ({len(printed)})", file=out)
    print(f"{sum(map(len, per_file.values()))} tags in {sum(1 for f in per_file.values() if f)} files; "
          f"{len(figures())} figures in {DATA.relative_to(ROOT) if DATA.is_relative_to(ROOT) else DATA}", file=out)
    for p in problems:
        print(f"✗ {p}", file=out)
    return len(problems)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["check"]:
        return 1 if check() else 0
    if len(args) == 2 and args[0] in ("value", "quote"):
        try:
            print(value(args[1]) if args[0] == "value" else quote(args[1]))
        except SddError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m sdd_edu.measured check            # every quote in the texts against the file\n"
          "       python -m sdd_edu.measured {value,quote} KEY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
