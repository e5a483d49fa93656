"""Run profiles: TOML files under profiles/, validated into a `Profile`.

Public API: `load_profile`, `parse_overrides`, `profile_to_dict`, `profile_from_dict`,
`ProfileError` (defined in `errors.py`, re-exported here). Reading uses tomllib; writing
(the TUI editor) uses tomlkit in `edit.py` so comments and layout survive.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from moedesk.profiles.errors import Problem, ProfileError
from moedesk.profiles.rules import resolve_data_path
from moedesk.profiles.schema import SECTIONS, Profile
from moedesk.profiles.validate import build_profile

__all__ = ["Profile", "ProfileError", "load_profile", "parse_overrides", "apply_overrides",
           "profile_to_dict", "profile_from_dict", "flat_settings", "read_toml", "validate_data"]


def read_toml(path: str | Path) -> dict:
    """Parse a TOML file, turning every failure into a `ProfileError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(str(path), [Problem("(file)", "no such profile file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), [Problem("(file)", f"cannot read: {exc}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(str(path), [Problem("(toml)", f"not valid TOML: {exc}")]) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-3", "name=x"]` -> {"train.lr": 0.001, "name": "x"}; values are TOML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ProfileError("--set", [Problem(pair, "must look like section.key=value")])
        key, raw = pair.split("=", 1)
        key, raw = key.strip(), raw.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # bare words are strings: --set data.source=text
        out[key] = value
    return out


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A copy of parsed TOML data with dotted-key overrides applied (validated later)."""
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ProfileError("--set", [Problem(key, f"{part} is not a table")])
            node = child
        node[parts[-1]] = value
    return data


def validate_data(data: dict, file: str = "") -> Profile:
    """Validate parsed data and resolve data.path to an absolute path."""
    profile = build_profile(data, file)
    if profile.data.path:
        profile.data.path = str(resolve_data_path(profile))
    return profile


def load_profile(path: str | Path, overrides: dict[str, Any] | None = None) -> Profile:
    """Read, override and validate a profile file; raises `ProfileError` on any problem."""
    data = read_toml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_data(data, str(path))


def profile_to_dict(profile: Profile) -> dict:
    """The resolved config as plain JSON-able data (stored in runs.config_json)."""
    return asdict(profile)


def flat_settings(profile: Profile) -> dict[str, Any]:
    """The resolved profile as dotted keys: {"name": ..., "moe.top_k": 2, "train.lr": ...}
    (`[health.RULE]` tables are left out)."""
    out: dict[str, Any] = {}
    for key, value in profile_to_dict(profile).items():
        if isinstance(value, dict):
            out.update((f"{key}.{k}", v) for k, v in value.items() if not isinstance(v, dict))
        elif key != "path":
            out[key] = value
    return out


def profile_from_dict(data: dict) -> Profile:
    """Rebuild a `Profile` from `profile_to_dict` output (already validated once)."""
    data = dict(data)
    path = data.pop("path", "")
    sections = {}
    for name, cls in SECTIONS.items():
        # keys a newer schema dropped are ignored and new keys take their defaults, so a
        # run created by an older moedesk can still be resumed
        known = {f.name for f in fields(cls)}
        sections[name] = cls(**{k: v for k, v in data.get(name, {}).items() if k in known})
    return Profile(name=data["name"], kind=data["kind"], seed=data["seed"], path=path, **sections)
