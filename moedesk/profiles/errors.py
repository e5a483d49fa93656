"""What is wrong with a profile: one `Problem` per bad key, gathered into a `ProfileError`.

Its own module so that the generic validator (`validate.py`), the cross-field rules and the
health-override checks (`rules.py`) and the loader (`__init__.py`) all import it from below
instead of from each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Problem:
    key: str
    message: str

    def render(self, file: str) -> str:
        where = f"{file}: " if file else ""
        return f"{where}{self.key}: {self.message}"


class ProfileError(Exception):
    """A profile that cannot be used; `problems` holds one line per bad key."""

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))

    @property
    def lines(self) -> list[str]:
        return [p.render(self.file) for p in self.problems]
