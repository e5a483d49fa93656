"""Run profiles: TOML files under profiles/, validated into a `Profile`.

Public API: `load_profile`, `parse_overrides`, `profile_to_dict`, `profile_from_dict`,
`ProfileError` (defined in `errors.py`, re-exported here). Reading uses tomllib; writing
(the TUI editor) uses tomlkit in `edit.py` so comments and layout survive.
"""

from __future__ import annotations

import copy
import stat
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from moedesk.profiles.errors import Problem, ProfileError
from moedesk.profiles.rules import resolve_paths
from moedesk.profiles.schema import SECTIONS, Profile
from moedesk.profiles.validate import build_profile

__all__ = ["Profile", "ProfileError", "load_profile", "parse_overrides", "apply_overrides",
           "profile_to_dict", "profile_from_dict", "flat_settings", "read_toml", "validate_data"]


# a profile is a few KB; anything far larger is not one (and /dev/zero never ends)
MAX_PROFILE_BYTES = 1024 * 1024
TOO_DEEP = "nested too deeply (tables and arrays more than a few hundred levels deep)"


def read_toml(path: str | Path) -> dict:
    """Parse a TOML file, turning every failure into a `ProfileError` naming the file.

    Only regular files of at most MAX_PROFILE_BYTES are read: a FIFO would block and a
    device like /dev/zero would never end."""
    path = Path(path)

    def problem(text: str, key: str = "(file)") -> ProfileError:
        return ProfileError(str(path), [Problem(key, text)])

    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise problem("not a regular file (a folder, FIFO or device); a profile is a"
                          " TOML file")
        with open(path, "rb") as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
        if len(data) > MAX_PROFILE_BYTES:
            raise problem(f"larger than {MAX_PROFILE_BYTES // 1024} KB; a profile is a"
                          " small TOML file")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise problem("no such profile file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise problem(f"cannot read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise problem(f"not valid TOML: {exc}", "(toml)") from None
    except RecursionError:
        raise problem(TOO_DEEP, "(toml)") from None


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
        except RecursionError:
            raise ProfileError("--set", [Problem(key, TOO_DEEP)]) from None
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
    resolve_paths(profile)
    return profile


def load_profile(path: str | Path, overrides: dict[str, Any] | None = None) -> Profile:
    """Read, override and validate a profile file; raises `ProfileError` on any problem."""
    data = read_toml(path)
    try:
        if overrides:
            data = apply_overrides(data, overrides)
        return validate_data(data, str(path))
    except RecursionError:  # a deep value that parsed, but is too deep to copy or check
        raise ProfileError(str(path), [Problem("(toml)", TOO_DEEP)]) from None


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
