"""The recorded payloads in tests/samples are JSON objects, and each one is used by some test."""

from __future__ import annotations

import re
from pathlib import Path

from tests.samples import SAMPLES, load, names

TESTS = Path(__file__).resolve().parents[1]
# A sample named in a test: "kling/create-200", or a template like f"gateway/error-{status}".
NAME = re.compile(r'f?"((?:kling|callbacks|gateway)/[a-z0-9{}_-]+)"')


def named_in_tests() -> list[re.Pattern[str]]:
    found = []
    for path in TESTS.rglob("*.py"):
        if SAMPLES in path.parents:
            continue
        for name in NAME.findall(path.read_text()):
            found.append(re.compile(re.sub(r"\{[^}]*\}", "[^/]+", name)))
    return found


def test_every_sample_is_a_json_object() -> None:
    assert len(names()) >= 20
    for name in names():
        assert load(name), name


def test_every_sample_is_used_by_a_test() -> None:
    patterns = named_in_tests()
    unused = [name for name in names() if not any(p.fullmatch(name) for p in patterns)]
    assert unused == []
