"""JSON Schema violations as located, human problems: what was expected, what was found, the fix.

jsonschema's own messages ("'three' is not of type 'integer'") are never shown. Each error becomes a
Problem at the value's file:line:column (the key's for unknown and missing keys), with the expected value
described from the schema itself: its type and bounds, its enum, or the `x-expected` text that the
schema's `$defs` carry for formats such as durations and sizes (`x-fix` gives their fix). Unknown keys
get "did you mean"; a missing required key is not reported again when an unknown key is its misspelling.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from deployer.document import Document, did_you_mean
from deployer.errors import Problem

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

Schema = Mapping[str, Any]
Path = tuple[str | int, ...]

TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
              "object": "a mapping", "array": "a list", "null": "nothing"}


def schema_problems(doc: Document, schema: Schema) -> list[Problem]:
    """Every way doc.data breaks schema, as located problems (empty when it is valid)."""
    from jsonschema import Draft202012Validator  # here: ~80 ms of import, paid only when a document is checked

    errors = list(Draft202012Validator(schema).iter_errors(doc.data))
    unknown = [(tuple(e.absolute_path), key, e.schema) for e in errors if e.validator == "additionalProperties"
               for key in _extra_keys(e)]
    misspelled = {(path, _closest(key, _properties(sub))) for path, key, sub in unknown}
    problems = [doc.problem(path + (key,), f"unknown key '{key}'", did_you_mean(key, _properties(sub)), key=True)
                for path, key, sub in unknown]
    for error in errors:
        if error.validator == "required":
            problems.extend(_missing(doc, error, misspelled))
        elif error.validator != "additionalProperties":
            problems.append(_problem(doc, error, schema))
    return _unique(problems)


def _extra_keys(error: ValidationError) -> list[str]:
    if not isinstance(error.instance, Mapping) or error.validator_value is not False:
        return []
    known = _properties(error.schema)
    return [str(key) for key in error.instance if key not in known]


def _properties(schema: Any) -> list[str]:
    return list(schema.get("properties", {})) if isinstance(schema, Mapping) else []


def _closest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _missing(doc: Document, error: ValidationError, misspelled: set[tuple[Path, str | None]]) -> list[Problem]:
    path = tuple(error.absolute_path)
    present = error.instance if isinstance(error.instance, Mapping) else {}
    out = []
    for name in error.validator_value:
        if name in present or (path, name) in misspelled:
            continue
        what = error.schema.get("properties", {}).get(name, {}).get("description", "")
        fix = f"add `{name}:`" + (f" ({_first_sentence(what)})" if what else "")
        where = "" if not path else " here"
        out.append(doc.problem(path, f"missing required key '{name}'{where}", fix, key=True))
    return out


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".").lower()


def _problem(doc: Document, error: ValidationError, root: Schema) -> Problem:
    path = tuple(error.absolute_path)
    if "propertyNames" in error.relative_schema_path:  # the key itself is wrong; jsonschema gives it as instance
        name = str(error.instance)
        sub = _resolved(error.schema, root)
        return doc.problem(path + (name,), f"invalid name '{name}': expected {expected(sub, root)}",
                           str(sub.get("x-fix", "")), key=True)
    sub = _resolved(error.schema, root)
    message = f"expected {expected(sub, root)}, got {shown(error.instance)}"
    return doc.problem(path, message, _fix(error, sub))


def _fix(error: ValidationError, sub: Mapping[str, Any]) -> str:
    if error.validator == "enum" and isinstance(error.instance, str):
        return did_you_mean(error.instance, [str(v) for v in error.validator_value if v is not None]).replace(
            "valid keys", "valid values")
    if "x-fix" in sub:
        return str(sub["x-fix"])
    if error.validator == "type" and isinstance(error.instance, (bool, int, float)) and "string" in _types(sub):
        return f'quote it: "{shown(error.instance)}"'
    if error.validator == "type" and isinstance(error.instance, str) and _is_number(error.instance):
        return f"remove the quotes: {error.instance.strip()}"
    return f"change it to {expected(sub)}"  # every problem says how to fix it, if only by restating the rule


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _resolved(schema: Any, root: Schema) -> dict[str, Any]:
    """schema with the keywords of its local `$ref` chain merged in (its own keywords win)."""
    if not isinstance(schema, Mapping):
        return {}
    out = dict(schema)
    ref = out.get("$ref", "")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = _resolved(root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {}), root)
        out = {**target, **out}
    return out


def _types(schema: Mapping[str, Any]) -> list[str]:
    types = schema.get("type", [])
    return [types] if isinstance(types, str) else list(types)


def expected(schema: Mapping[str, Any], root: Schema | None = None) -> str:
    """What a schema accepts, in words: "an integer >= 0", "one of service, batch, system"."""
    schema = _resolved(schema, root or {})
    if "x-expected" in schema:
        return str(schema["x-expected"])
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"] if v is not None)
    words = [TYPE_WORDS.get(t, t) for t in _types(schema) if t != "null"] or ["nothing"]
    text = " or ".join(words)
    if len(words) == 1:
        text = _with_bounds(text, schema)
    return text


def _with_bounds(text: str, schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f"{text} from {low} to {high}"
    if low is not None:
        return f"{text} >= {low}"
    if schema.get("exclusiveMinimum") is not None:
        return f"{text} > {schema['exclusiveMinimum']}"
    if high is not None:
        return f"{text} <= {high}"
    if schema.get("minItems") or schema.get("minLength"):
        return text.replace("a ", "a non-empty ", 1)
    return text


def shown(value: Any) -> str:
    """A short, readable rendering of a found value: 'three', 42, true, a list, nothing."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: dict[tuple[str, str], Problem] = {}
    for problem in problems:
        seen.setdefault((problem.path, problem.message), problem)
    return list(seen.values())
