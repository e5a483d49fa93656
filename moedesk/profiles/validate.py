"""Turning untrusted TOML data into a `Profile`, or into a list of clear problems.

Each problem names the file, the dotted key, the bad value and what is allowed.
Nothing here raises anything but `ProfileError` (`errors.py`); callers print its lines.
Single keys are checked here against `schema.py`; cross-field rules and `[health.RULE]`
overrides are checked by `rules.py`.
"""

from __future__ import annotations

import math
from typing import Any

from moedesk.profiles.errors import Problem, ProfileError
from moedesk.profiles.rules import cross_field_problems, health_problems
from moedesk.profiles.schema import KINDS, SECTIONS, TOP_LEVEL, Profile, section_fields

_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "list": "a list of integers", "dict": "a table",
               "list[dict]": "a list of tables ([[...]])"}


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_value(key: str, value: Any, type_name: str, meta: dict) -> tuple[Any, Problem | None]:
    """Coerce and range-check one value; returns (value, problem)."""
    want = _TYPE_NAMES.get(type_name, type_name)
    if type_name == "bool":
        if not isinstance(value, bool):
            return value, Problem(key, f"got {_show(value)}; must be {want}")
    elif type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                value = int(value)
            else:
                return value, Problem(key, f"got {_show(value)}; must be {want}")
    elif type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, Problem(key, f"got {_show(value)}; must be {want}")
        value = float(value)
        if not math.isfinite(value):
            return value, Problem(key, f"got {_show(value)}; must be a finite number")
    elif type_name == "str":
        if not isinstance(value, str):
            return value, Problem(key, f"got {_show(value)}; must be {want}")
    elif type_name == "list":
        items = meta.get("items", int)
        if items is str:
            want = "a list of strings"
        if not isinstance(value, list) or not all(
                isinstance(v, items) and not isinstance(v, bool) for v in value):
            return value, Problem(key, f"got {_show(value)}; must be {want}")
    elif type_name == "dict":
        if not isinstance(value, dict):
            return value, Problem(key, f"got {_show(value)}; must be {want}")
    elif type_name == "list[dict]":  # entries are checked by the section's cross-field rules
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            return value, Problem(key, f"got {_show(value)}; must be {want}")
    choices = meta.get("choices")
    if choices and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        return value, Problem(key, f"got {_show(value)}; allowed values: {allowed}")
    lo, hi = meta.get("min"), meta.get("max")
    if type_name in ("int", "float"):
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            op = ">" if meta.get("min_exclusive") else ">="
            rng = f"{op} {lo}" if hi is None else f"{op} {lo} and <= {hi}"
            return value, Problem(key, f"got {_show(value)}; must be {rng}")
        if hi is not None and value > hi:
            rng = f"<= {hi}" if lo is None else f"between {lo} and {hi}"
            return value, Problem(key, f"got {_show(value)}; must be {rng}")
    return value, None


def _unknown(key: str, allowed: list[str]) -> Problem:
    return Problem(key, "unknown key; allowed keys: " + ", ".join(allowed))


def build_profile(data: dict, file: str = "") -> Profile:
    """Validate parsed TOML data and build a `Profile`, or raise `ProfileError`."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ProfileError(file, [Problem("(file)", "must be a TOML table")])
    top: dict[str, Any] = {}
    for key, (typ, _help) in TOP_LEVEL.items():
        if key not in data:
            problems.append(Problem(key, f"missing; required ({_help})"))
            continue
        value, problem = _check_value(key, data[key], typ.__name__, {})
        if problem:
            problems.append(problem)
        top[key] = value
    if "kind" in top and isinstance(top["kind"], str) and top["kind"] not in KINDS:
        problems.append(Problem("kind", f"got {_show(top['kind'])}; allowed values: "
                                + ", ".join(repr(k) for k in KINDS)))
    if isinstance(top.get("seed"), int) and not 0 <= top["seed"] < 2**63:
        problems.append(Problem("seed", f"got {top['seed']}; must be >= 0 and < 2**63"))
    if isinstance(top.get("name"), str) and not top["name"].strip():
        problems.append(Problem("name", "must not be empty"))

    allowed_top = list(TOP_LEVEL) + list(SECTIONS)
    for key in data:
        if key not in allowed_top:
            problems.append(_unknown(key, allowed_top))

    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            problems.append(Problem(section, f"got {_show(raw)}; must be a table [{section}]"))
            raw = {}
        values: dict[str, Any] = {}
        spec = section_fields(section)
        names = [name for name, *_ in spec]
        for name, type_name, default, meta in spec:
            key = f"{section}.{name}"
            if section == "health" and name == "rules":
                rules = {k: v for k, v in raw.items() if k not in names}
                problems.extend(health_problems(rules))
                values["rules"] = rules
                continue
            if name not in raw:
                values[name] = default
                continue
            value, problem = _check_value(key, raw[name], str(type_name), meta)
            if problem:
                problems.append(problem)
            values[name] = value
        if section != "health":
            for key in raw:
                if key not in names:
                    problems.append(_unknown(f"{section}.{key}", names))
        sections[section] = cls(**values)

    if problems:
        raise ProfileError(file, problems)
    profile = Profile(name=top["name"], kind=top["kind"], seed=top["seed"], path=file, **sections)
    problems = cross_field_problems(profile)
    if problems:
        raise ProfileError(file, problems)
    return profile
