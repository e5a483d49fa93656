"""The runs filter: `tag:lab status:failed,crashed -kind:dense words` (CLI and TUI).

A filter is whitespace-separated terms, all of which a run must match:

- `tag:T` the run has tag T; `status:S`, `kind:K`; `name:N` its name contains N;
- a comma is "or" within a term (`status:failed,crashed`);
- a leading `-` negates a term (`-tag:baseline`);
- any other word must appear in the run's name, kind, status or tags (case-insensitive).

`parse_filter` raises `FilterError` for an unknown key or an empty term value; a term
being typed (`tag:` with nothing after it yet) is what `parse_filter(text, partial=True)`
skips instead, for a live filter box. Pure Python: no store, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

KEYS = ("tag", "status", "kind", "name")


class FilterError(ValueError):
    """A filter that cannot be read; the message names the term and the allowed keys."""


@dataclass(frozen=True)
class Term:
    key: str  # one of KEYS, or "" for a free word
    values: tuple[str, ...]
    negated: bool = False

    def hit(self, name: str, kind: str, status: str, tags: frozenset[str]) -> bool:
        if self.key == "tag":
            found = any(v in tags for v in self.values)
        elif self.key == "status":
            found = status.lower() in self.values
        elif self.key == "kind":
            found = kind.lower() in self.values
        elif self.key == "name":
            found = any(v in name.lower() for v in self.values)
        else:
            text = " ".join([name, kind, status, *sorted(tags)]).lower()
            found = any(v in text for v in self.values)
        return found != self.negated


@dataclass(frozen=True)
class RunFilter:
    terms: tuple[Term, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def matches(self, *, name: str, kind: str, status: str, tags: Iterable[str] = ()) -> bool:
        tag_set = frozenset(tags)
        return all(t.hit(name, kind, status, tag_set) for t in self.terms)


def parse_filter(text: str, partial: bool = False) -> RunFilter:
    """Read a filter (see the module doc); `partial` skips unfinished terms."""
    terms = []
    for raw in text.split():
        negated = raw.startswith("-") and len(raw) > 1
        word = raw[1:] if negated else raw
        key, sep, value = word.partition(":")
        if not sep:
            terms.append(Term("", (word.lower(),), negated))
            continue
        key = key.lower()
        if key not in KEYS:
            if partial:
                terms.append(Term("", (word.lower(),), negated))
                continue
            raise FilterError(f"filter term {raw!r}: unknown key {key!r}; allowed keys: "
                              + ", ".join(KEYS))
        # tags are matched exactly as written; the other keys ignore case
        values = tuple(v if key == "tag" else v.lower() for v in value.split(",") if v)
        if not values:
            if partial:
                continue
            raise FilterError(f"filter term {raw!r}: nothing after '{key}:' (e.g. {key}:VALUE)")
        terms.append(Term(key, values, negated))
    return RunFilter(tuple(terms))


__all__ = ["FilterError", "RunFilter", "Term", "parse_filter", "KEYS"]
