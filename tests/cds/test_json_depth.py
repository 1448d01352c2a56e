"""`json_depth` (the body's nesting, measured on the raw bytes before parsing) against a plain
character-by-character reader, on random JSON whose strings hold brackets, quotes, backslashes and
non-ASCII text, and on a real 72-hour prefetch."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from cds.bodies import json_depth, parse_json
from cds.errors import PayloadTooLarge
from demo_ehr import patient_view_request
from testkit.helpers import synthetic_stay

_PIECES = ("[", "]", "{", "}", '"', "\\", '\\"', "\\\\", "a", " ", "é", "[[", "]}", '"]', "\\n")


def reference_depth(text: str) -> int:
    """The nesting depth as a JSON reader sees it, one character at a time."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def random_string(rng: random.Random) -> str:
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 6)))


def random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.random()
    if depth > 9 or kind < 0.35:
        return rng.choice([random_string(rng), 1, 2.5, None, True, ""])
    if kind < 0.7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_string(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


@pytest.mark.parametrize("seed", range(5))
def test_depth_equals_a_character_reader_on_random_json(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        text = json.dumps(random_value(rng, 0), ensure_ascii=rng.random() < 0.5)
        assert json_depth(text.encode()) == reference_depth(text), text


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("", 0),
        ("1", 0),
        ('"[[["', 0),
        ('""', 0),
        ('["", "", ""]', 1),
        ('["[", "]]]", {"a": "{"}]', 2),
        ('["\\"[", [["\\\\"]]]', 3),
        ('{"a": ["x[y", "", "z]"], "b": [[]]}', 3),
    ],
)
def test_depth_of_small_texts(text: str, depth: int) -> None:
    assert json_depth(text.encode()) == depth == reference_depth(text)


def test_depth_of_a_72_hour_prefetch() -> None:
    text = json.dumps(patient_view_request(synthetic_stay(hours=72)))
    assert len(text) > 100_000
    assert json_depth(text.encode()) == reference_depth(text) > 5


def test_deep_body_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_json(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", max_depth=64)
    assert parse_json(b'{"a": "' + b"[" * 1000 + b'"}', max_depth=64) == {"a": "[" * 1000}
