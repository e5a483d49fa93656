"""Property-based fuzzing of the shipped profiles (hypothesis).

Mutations: values of the wrong type, out of range or non-finite, missing and unknown keys
(also inside `[health.RULE]` tables), sections that are not tables, and broken TOML text.
Whatever comes out, loading gives a valid `Profile` or a `ProfileError` whose every line
names the file and a key; never another exception. `moedesk run` on an invalid one exits
2 with that error and creates no run row.
"""

from __future__ import annotations

import re
import sqlite3
import string
import tomllib
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.health.thresholds import RULES
from moedesk.profiles import Profile, ProfileError, load_profile

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "profiles").glob("*.toml"))
NAMES = st.text(string.ascii_lowercase + "_", min_size=1, max_size=10)
# a key as ProfileError renders it: dotted names, or (file) / (toml) for the whole file
KEY = re.compile(r"^(\(file\)|\(toml\)|[a-z_][a-z0-9_]*(\.[a-z0-9_]+)*)$")

weird_values = st.one_of(
    st.integers(-(10**12), 10**12), st.integers(-(2**63), 2**64),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=6),
    st.lists(st.integers(-3, 300), max_size=3), st.lists(st.text(max_size=2), max_size=2),
    st.just({}), st.dictionaries(NAMES, st.integers(0, 9), max_size=2))


def leaves(data: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in data.items():
        path = prefix + (key,)
        out += leaves(value, path) if isinstance(value, dict) and value else [path]
    return out


def set_path(data: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


def delete_path(data: dict, path: tuple) -> None:
    for key in path[:-1]:
        data = data[key]
    data.pop(path[-1], None)


@st.composite
def mutated_profile(draw) -> tuple[str, str]:
    """(profile file name, TOML text) of a shipped profile after 1-3 mutations."""
    source = draw(st.sampled_from(SHIPPED))
    data = tomllib.loads(source.read_text())
    for _ in range(draw(st.integers(1, 3))):
        paths = leaves(data) or [("name",)]
        kind = draw(st.sampled_from(["value", "number", "delete", "unknown", "health",
                                     "section"]))
        if kind == "value":
            set_path(data, draw(st.sampled_from(paths)), draw(weird_values))
        elif kind == "number":  # a plausible type with an implausible size
            numeric = [p for p in paths if isinstance(_get(data, p), (int, float))
                       and not isinstance(_get(data, p), bool)] or paths
            path = draw(st.sampled_from(numeric))
            old = _get(data, path)
            base = old if isinstance(old, (int, float)) and not isinstance(old, bool) else 1
            set_path(data, path, draw(st.sampled_from([-1, 0, 2, 1e9, -1e-9, 0.5]))
                     * (base or 1))
        elif kind == "delete":
            delete_path(data, draw(st.sampled_from(paths + [("name",), ("kind",), ("seed",)])))
        elif kind == "unknown":
            where = draw(st.sampled_from([(), ("model",), ("train",), ("moe",), ("health",)]))
            set_path(data, where + (draw(NAMES),), draw(weird_values))
        elif kind == "health":
            rule = draw(st.sampled_from([*RULES, "no_such_rule"]))
            params = list(RULES[rule].params) if rule in RULES else []
            key = draw(st.sampled_from([*params, "no_such_key"]))
            set_path(data, ("health", rule, key), draw(weird_values))
        else:
            section = draw(st.sampled_from(["model", "moe", "train", "data", "health"]))
            data[section] = draw(st.sampled_from([3, "x", [1], True]))
    text = tomlkit.dumps(data)
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter of them: break the text
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "[", "]", "=", '"', "\n[[x", "= =\n"]))
        text += text[cut:] if draw(st.booleans()) else ""
    return source.name, text


def _get(data: dict, path: tuple):
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def load_or_error(path: Path) -> Profile | ProfileError:
    """The only two outcomes allowed; anything else raised fails the test."""
    try:
        return load_profile(path)
    except ProfileError as exc:
        return exc


def assert_names_file_and_key(error: ProfileError, path: Path) -> None:
    assert error.lines
    for line in error.lines:
        assert line.startswith(f"{path}: "), line
        key = line[len(f"{path}: "):].split(": ", 1)[0]
        assert KEY.match(key), f"no key in {line!r}"


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_profile())
def test_mutated_profiles_load_or_fail_with_file_and_key(tmp_path_factory, case):
    name, text = case
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_text(text)
    outcome = load_or_error(path)
    if isinstance(outcome, ProfileError):
        assert_names_file_and_key(outcome, path)
    else:
        assert isinstance(outcome, Profile) and outcome.kind in ("dense", "topk", "ternary")


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_profile())
def test_the_cli_refuses_invalid_profiles_without_creating_a_run(tmp_path_factory, case):
    name, text = case
    folder = tmp_path_factory.mktemp("fuzzcli")
    path, home = folder / name, folder / "home"
    path.write_text(text)
    outcome = load_or_error(path)
    if not isinstance(outcome, ProfileError):
        return  # a valid mutation would start a real training: not this test's business
    result = CliRunner().invoke(app, ["run", str(path), "--home", str(home)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a clean exit, not a crash
    assert str(path) in result.output.replace("\n", "")
    db = home / "moedesk.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def _outcome_of(case: tuple[str, str], folder: Path) -> bool:
    """True when the mutated profile loads, False when it is refused."""
    name, text = case
    path = folder / name
    path.write_text(text)
    return isinstance(load_or_error(path), Profile)


@pytest.mark.slow
def test_the_fuzzer_reaches_both_outcomes(tmp_path):
    """Guard against a generator that only ever breaks profiles (or never does): hypothesis
    must find a mutation that still loads and one that is refused."""
    settings_ = settings(max_examples=200, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow])
    valid = find(mutated_profile(), lambda case: _outcome_of(case, tmp_path), settings=settings_)
    invalid = find(mutated_profile(), lambda case: not _outcome_of(case, tmp_path),
                   settings=settings_)
    assert _outcome_of(valid, tmp_path) and not _outcome_of(invalid, tmp_path)
