"""Located YAML: every key and value knows its file:line:column; malformed input is located too."""

from __future__ import annotations

import pytest

from deployer.document import did_you_mean, dotted, parse_document
from deployer.errors import ConfigError

TEXT = """\
name: web
resources:
  cpus: 2
files:
  - src: a.txt
    dest: /srv/a.txt
"""


@pytest.mark.parametrize("path, key, expected", [
    (("name",), True, (1, 1)),
    (("name",), False, (1, 7)),
    (("resources", "cpus"), True, (3, 3)),
    (("resources", "cpus"), False, (3, 9)),
    (("files", 0, "dest"), False, (6, 11)),
    (("files", 0, "missing"), False, (5, 5)),
    (("resources", "gpus"), True, (2, 1)),
], ids=[
    "a top-level key is at column 1",
    "a top-level value is after the colon",
    "a nested key is indented",
    "a nested value is after its key",
    "a value inside a list item is found by index",
    "a missing key falls back to its parent mapping",
    "a missing nested key falls back to the parent key",
])
def test_positions(path: tuple, key: bool, expected: tuple[int, int]) -> None:
    doc = parse_document(TEXT, "job.yaml")
    loc = doc.at(path, key=key)
    assert (loc.line, loc.column) == expected


@pytest.mark.parametrize("text, line, needle", [
    ("a: [1, 2\n", 2, "malformed YAML"),
    ("a: 1\n  b: 2\n", 2, "malformed YAML"),
    ("a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a' (first at line 1)"),
], ids=["an unclosed list", "bad indentation", "a duplicate key"])
def test_bad_yaml_is_located(text: str, line: int, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_document(text, "bad.yaml")
    problem = err.value.problems[0]
    assert problem.location.source == "bad.yaml"
    assert problem.location.line == line
    assert needle in problem.message
    assert problem.fix


def test_unsafe_tags_are_refused() -> None:
    with pytest.raises(ConfigError, match="malformed YAML"):
        parse_document("a: !!python/object/apply:os.system ['true']\n", "evil.yaml")


def test_aliases_and_merge_keys_resolve() -> None:
    doc = parse_document("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n", "m.yaml")
    assert doc.data["other"] == {"x": 1, "y": 2}


@pytest.mark.parametrize("word, choices, hint", [
    ("attemps", ["attempts", "delay"], "did you mean 'attempts'?"),
    ("zzz", ["b", "a"], "valid keys: a, b"),
], ids=["a misspelling gets the closest key", "nonsense lists the valid keys"])
def test_did_you_mean(word: str, choices: list[str], hint: str) -> None:
    assert did_you_mean(word, choices) == hint


def test_dotted_paths() -> None:
    assert dotted(("files", 1, "dest")) == "files[1].dest"
    assert dotted(()) == ""
