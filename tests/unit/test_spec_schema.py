"""job.schema.json is a valid JSON Schema that documents itself, and it agrees with the dataclasses."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from deployer import units
from deployer.models import (
    FileSpec,
    HealthCheck,
    JobSpec,
    Placement,
    Port,
    ReschedulePolicy,
    Resources,
    RestartPolicy,
    Schedule,
    StopPolicy,
    UpdatePolicy,
)
from deployer.schema_problems import expected, shown
from deployer.spec import job_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "deployer" / "schemas" / "job.schema.json"

# Where each dataclass's fields are described in the schema.
SECTIONS: dict[tuple[str, ...], type] = {
    (): JobSpec, ("resources",): Resources, ("placement",): Placement, ("restart",): RestartPolicy,
    ("reschedule",): ReschedulePolicy, ("update",): UpdatePolicy, ("stop",): StopPolicy,
    ("schedule",): Schedule, ("health",): HealthCheck, ("files", "items"): FileSpec, ("ports", "items"): Port,
}
# Keys whose value is computed from other keys rather than defaulted.
COMPUTED = {("health", "http"), ("health", "tcp"), ("health", "command"), ("health", "port"),
            ("files", "items", "dest"), ("secrets",)}


def properties(path: tuple[str, ...]) -> dict[str, Any]:
    node: Any = job_schema()
    for part in path:
        node = node["properties"][part] if part != "items" else node["items"]
    return node["properties"]  # type: ignore[no-any-return]


def every_property(node: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any],
                                                                                   dict[str, Any]]]:
    """(path, property schema, parent schema) for every property, nested ones and $defs included."""
    node = job_schema() if node is None else node
    for name, prop in node.get("properties", {}).items():
        yield path + (name,), prop, node
        yield from every_property(prop, path + (name,))
        if isinstance(prop.get("items"), dict):
            yield from every_property(prop["items"], path + (name, "items"))
    if not path:
        for name, definition in node.get("$defs", {}).items():
            yield from every_property(definition, ("$defs", name))


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


def test_the_packaged_schema_is_the_file_flex_schema_prints() -> None:
    assert job_schema() == json.loads(SCHEMA_FILE.read_text())


@pytest.mark.parametrize("path, prop, parent", list(every_property()), ids=lambda v: ".".join(v)
                         if isinstance(v, tuple) else "")
def test_every_property_has_a_description_and_every_optional_one_a_default(
        path: tuple[str, ...], prop: dict[str, Any], parent: dict[str, Any]) -> None:
    assert prop.get("description"), f"{'.'.join(path)} has no description"
    if path[-1] not in parent.get("required", ()):
        assert "default" in prop, f"{'.'.join(path)} has no default"


def model_value(prop: dict[str, Any], default: Any, path: tuple[str, ...]) -> Any:
    """A schema default converted the way the spec converts a value written in YAML."""
    ref = prop.get("$ref")
    if default is None:
        return None
    if ref == "#/$defs/duration":
        return units.parse_duration(default)
    if ref == "#/$defs/size":
        return units.parse_size(default)
    if ref == "#/$defs/mode":
        return int(default, 8)
    if default == {} and path in SECTIONS:
        return SECTIONS[path]()
    return tuple(default) if isinstance(default, list) else default


def schema_defaults() -> Iterator[tuple[type, str, Any, Any]]:
    for section, cls in SECTIONS.items():
        for name, prop in properties(section).items():
            if "default" in prop and section + (name,) not in COMPUTED and (section + (name,))[-2:] not in COMPUTED:
                yield cls, name, prop, model_value(prop, prop["default"], section + (name,))


def class_default(cls: type, name: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("cls, name, prop, value", list(schema_defaults()),
                         ids=lambda v: v.__name__ if isinstance(v, type) else v if isinstance(v, str) else "")
def test_the_schema_default_is_the_dataclass_default(cls: type, name: str, prop: dict[str, Any], value: Any) -> None:
    assert class_default(cls, name) == value


def test_every_dataclass_field_is_in_the_schema_unless_computed() -> None:
    computed = {"source", "src", "sha256", "size", "kind", "path", "port", "command"}
    for section, cls in SECTIONS.items():
        names = set(properties(section))
        missing = {f.name for f in dataclasses.fields(cls)} - names - computed
        assert not missing, f"{cls.__name__}: {missing}"


@pytest.mark.parametrize("definition, pattern", [
    ("duration", units.DURATION_PATTERN), ("size", units.SIZE_PATTERN),
], ids=["the duration pattern is the one units parses", "the size pattern is the one units parses"])
def test_schema_patterns_match_the_parsers(definition: str, pattern: str) -> None:
    assert job_schema()["$defs"][definition]["pattern"] == pattern


@pytest.mark.parametrize("schema, text", [
    ({"type": "integer", "minimum": 0}, "an integer >= 0"),
    ({"type": "integer", "minimum": 1, "maximum": 65535}, "an integer from 1 to 65535"),
    ({"type": "number", "exclusiveMinimum": 0}, "a number > 0"),
    ({"type": ["string", "null"]}, "a string"),
    ({"type": "array", "minItems": 1}, "a non-empty list"),
    ({"type": "string", "enum": ["a", "b", None]}, "one of a, b"),
    ({"type": "string", "$ref": "#/$defs/duration"}, 'a duration like "30s", "5m" or "1h30m"'),
], ids=["a minimum", "a range", "an exclusive minimum", "a nullable type", "a non-empty list", "an enum",
        "a format from $defs"])
def test_expectations_read_as_words(schema: dict[str, Any], text: str) -> None:
    assert expected(schema, job_schema()) == text


@pytest.mark.parametrize("value, text", [
    ("three", "'three'"), (None, "nothing"), (True, "true"), (-1, "-1"), ([1], "a list"), ({}, "a mapping"),
    ("x" * 100, "'" + "x" * 37 + "...'"),
], ids=["a string is quoted", "null is nothing", "a boolean is YAML's", "a number is itself", "a list is named",
        "a mapping is named", "a long string is cut"])
def test_found_values_are_shown_short(value: Any, text: str) -> None:
    assert shown(value) == text
