"""A resolved profile written back as TOML: `moedesk profiles show`.

The output is a profile file: every `[section]` header, every key with its value
(defaults filled in), `[health.RULE]` override tables, written by tomlkit so that
reading it back (`load_profile`) gives the same `Profile`. Sections a kind does not
read are left out (they would only restate defaults) and named in the header comment;
keys of a read section that the kind ignores carry a `# not used by KIND runs` comment.
Which sections a kind reads is `edit.KIND_SECTIONS`, the editor's own definition.
"""

from __future__ import annotations

import tomlkit

from moedesk.profiles import Profile, profile_to_dict
from moedesk.profiles.edit import KIND_SECTIONS
from moedesk.profiles.schema import SECTIONS, section_fields


def unused_note(kind: str, meta: dict) -> str | None:
    """"not used by KIND runs" for a key whose schema limits it to other kinds."""
    kinds = meta.get("kinds") or ()
    if kinds and kind not in kinds:
        return f"not used by {kind} runs"
    return None


def profile_toml(profile: Profile, source: str = "") -> str:
    """The fully resolved `profile` as TOML text that `load_profile` reads back as is."""
    data = profile_to_dict(profile)
    used = KIND_SECTIONS[profile.kind]
    skipped = [s for s in SECTIONS if s not in used]
    doc = tomlkit.document()
    where = f" from {source}" if source else ""
    doc.add(tomlkit.comment(f"{profile.name}: the resolved profile{where}, defaults filled in"))
    if skipped:
        doc.add(tomlkit.comment(f"{profile.kind} runs do not read "
                                + ", ".join(f"[{s}]" for s in skipped) + " (left out)"))
    for key in ("name", "kind", "seed"):
        doc.add(key, data[key])
    for section in used:
        table = tomlkit.table()
        rules: dict = {}
        for name, _type, _default, meta in section_fields(section):
            value = data[section][name]
            if section == "health" and name == "rules":
                rules = value or {}
                continue
            item = tomlkit.item(value)
            note = unused_note(profile.kind, meta)
            if note:
                item.comment(note)
                item.trivia.comment_ws = "  "
            table.add(name, item)
        for rule, params in sorted(rules.items()):
            sub = tomlkit.table()
            for key, value in params.items():
                sub.add(key, value)
            table.add(rule, sub)
        doc.add(tomlkit.nl())
        doc.add(section, table)
    return tomlkit.dumps(doc)


__all__ = ["profile_toml", "unused_note"]
