"""A profile file being edited: field specs, pending edits, validation and a faithful save.

Edits are kept as the text the user typed and read exactly like the CLI's
`--set key=value` (`parse_overrides`: TOML literals, bare words are strings), then
validated by `validate_data`, so the editor shows the CLI's messages word for word.
Saving writes through tomlkit into the parsed document: comments, blank lines and the
spelling of untouched values survive, and an edited value keeps the literal typed
(`3e-4` stays `3e-4`). No Textual here; the editor screen drives it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from moedesk.profiles import (
    Problem,
    ProfileError,
    apply_overrides,
    parse_overrides,
    read_toml,
    validate_data,
)
from moedesk.profiles.schema import KINDS, SECTIONS, TOP_LEVEL, Profile, section_fields

# sections each kind reads; the others are shown collapsed
KIND_SECTIONS = {
    "dense": ("model", "train", "data", "checkpoint", "health"),
    "topk": ("model", "moe", "train", "data", "checkpoint", "health"),
    "ternary": ("ternary", "train", "data", "checkpoint", "health"),
}


@dataclass(frozen=True)
class FieldSpec:
    key: str  # dotted: "train.lr"; top-level keys have no dot
    section: str  # "" for top-level keys
    type_name: str  # int | float | bool | str | list
    default: Any
    help: str
    choices: tuple | None
    low: float | None
    high: float | None

    def describe(self) -> str:
        """The help text with its range or choices, as the editor shows it."""
        extra = ""
        if self.choices:
            extra = " [" + " | ".join(str(c) for c in self.choices) + "]"
        elif self.low is not None and self.high is not None:
            extra = f" [{self.low:g} .. {self.high:g}]"
        return self.help + extra


def field_specs() -> list[FieldSpec]:
    """Every editable key: the top-level ones, then each section's (not health tables)."""
    specs = [FieldSpec(key, "", typ.__name__, None, help_text,
                       KINDS if key == "kind" else None, None, None)
             for key, (typ, help_text) in TOP_LEVEL.items()]
    for section in SECTIONS:
        for name, type_name, default, meta in section_fields(section):
            if section == "health" and name == "rules":
                continue  # [health.RULE] tables: edit the file (see docs/health.md)
            specs.append(FieldSpec(f"{section}.{name}", section, str(type_name), default,
                                   meta.get("help", ""), meta.get("choices"), meta.get("min"),
                                   meta.get("max")))
    return specs


def to_literal(value: Any, type_name: str) -> str:
    """How a value is written in the editor: TOML, except strings that read back as strings."""
    if type_name == "str" and isinstance(value, str):
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value  # a bare word reads back as the same string
        if parsed == value:
            return value
        return tomlkit.string(value).as_string()
    return tomlkit.item(value).as_string()


class ProfileDocument:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.reload()

    def reload(self) -> None:
        """Read the file; an unreadable or invalid TOML file raises `ProfileError`, as the CLI."""
        self.data = read_toml(self.path)  # first: its errors are the CLI's, naming the file
        self.text = self.path.read_text(encoding="utf-8")
        try:
            self.doc = tomlkit.parse(self.text)
        except TOMLKitError as exc:
            raise ProfileError(str(self.path), [Problem("(toml)", f"not valid TOML: {exc}")]
                               ) from None
        self.edits: dict[str, str] = {}

    @property
    def dirty(self) -> bool:
        return bool(self.edits)

    @property
    def kind(self) -> str:
        kind = self.values().get("kind")
        return kind if kind in KINDS else "dense"

    def stored(self, spec: FieldSpec) -> Any:
        """The value in the file, or the default when the file leaves the key out."""
        node: Any = self.data
        for part in spec.key.split("."):
            if not isinstance(node, dict) or part not in node:
                return spec.default
            node = node[part]
        return node

    def in_file(self, key: str) -> bool:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def stored_literal(self, spec: FieldSpec) -> str:
        """The stored value as the editor writes it; numbers keep the file's spelling."""
        value = self.stored(spec)
        if value is None:
            return ""
        if self.in_file(spec.key) and not isinstance(value, str):
            node: Any = self.doc
            *parents, name = spec.key.split(".")
            for part in parents:
                node = node[part]
            return node.item(name).as_string().strip()
        return to_literal(value, spec.type_name)

    def raw(self, spec: FieldSpec) -> str:
        return self.edits.get(spec.key, self.stored_literal(spec))

    def set_raw(self, spec: FieldSpec, text: str) -> None:
        """Record what the user typed; typing the stored value back clears the edit."""
        if text == self.stored_literal(spec):
            self.edits.pop(spec.key, None)
        else:
            self.edits[spec.key] = text

    def overrides(self) -> dict[str, Any]:
        if not self.edits:
            return {}
        return parse_overrides([f"{key}={text}" for key, text in self.edits.items()])

    def values(self) -> dict:
        try:
            return apply_overrides(self.data, self.overrides())
        except ProfileError:
            return self.data

    def validate(self) -> tuple[Profile | None, dict[str, str], list[str]]:
        """(profile or None, {key: message}, the CLI's error lines)."""
        try:
            data = apply_overrides(self.data, self.overrides())
            return validate_data(data, str(self.path)), {}, []
        except ProfileError as exc:
            by_key: dict[str, str] = {}
            for problem in exc.problems:
                by_key.setdefault(problem.key, problem.message)
            return None, by_key, exc.lines

    def save(self) -> None:
        """Write the edits into the file, keeping everything else as it was."""
        for key, text in self.edits.items():
            self._set(key, text)
        text = tomlkit.dumps(self.doc)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)
        self.reload()

    def _set(self, key: str, text: str) -> None:
        try:
            item = tomlkit.parse(f"v = {text}")["v"]
        except Exception:
            item = tomlkit.string(text)  # a bare word, as the CLI reads it
        *parents, name = key.split(".")
        node = self.doc
        for part in parents:
            if part not in node:
                node.add(part, tomlkit.table())
            node = node[part]
        node[name] = item


def list_profiles(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.toml") if not p.name.startswith("."))
