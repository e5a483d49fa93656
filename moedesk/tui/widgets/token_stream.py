"""TokenStream: a prompt and its continuation as it streams in, optionally coloured by routing.

Tokens arrive one at a time (`add`) with the text the model wrote, kept raw (`text()`
is exactly what `moedesk sample --json` reports); what is drawn is made safe
(`format.terminal_safe`: no raw control character, an escape sequence a model wrote,
ever reaches the terminal). The drawn text is one rich `Text`, appended to, so a token
costs one append, not a rebuild. With routing on, each token's background is the colour
of its top expert in the chosen layer (`palette.expert_style`, the colours of `moedesk
sample --routing`), line breaks, tabs and control characters show as marks
(`format.display_piece`; a line break also breaks the line), and the first line is a
legend with each expert's share of the tokens so far. The prompt is dim (plain mode) or
italic (routing mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from moedesk.tui.format import display_piece, terminal_safe
from moedesk.tui.palette import expert_style

PROMPT_PLAIN = Style(dim=True)
PROMPT_ROUTED = Style(italic=True)


@dataclass
class StreamToken:
    text: str  # as the model wrote it (raw)
    prompt: bool
    top: dict[int, int] = field(default_factory=dict)  # layer -> top expert


class TokenStream(Widget):
    DEFAULT_CSS = "TokenStream { height: auto; padding: 0 1; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.tokens: list[StreamToken] = []
        self.routing = False
        self.shown_layer: int | None = None
        self.num_experts = 0
        self._text = Text()
        self._counts: list[int] = []

    # data

    def clear(self) -> None:
        self.tokens = []
        self._rebuild()

    def add(self, text: str, prompt: bool, top: dict[int, int] | None = None) -> None:
        token = StreamToken(text, prompt, top or {})
        self.tokens.append(token)
        self._append(token)
        self.refresh(layout=True)

    def show_routing(self, on: bool, layer: int | None, num_experts: int) -> None:
        self.routing, self.shown_layer, self.num_experts = on, layer, num_experts
        self._rebuild()

    @property
    def generated(self) -> int:
        return sum(1 for t in self.tokens if not t.prompt)

    def text(self) -> str:
        """The prompt and continuation as the model wrote them (raw)."""
        return "".join(t.text for t in self.tokens)

    def plain(self) -> str:
        """The text as drawn, without styles."""
        return self.render().plain

    # drawing

    def _expert(self, token: StreamToken) -> int | None:
        return token.top.get(self.shown_layer) if self.routing and self.shown_layer is not None else None

    def _append(self, token: StreamToken) -> None:
        expert = self._expert(token)
        if expert is None:
            self._text.append(terminal_safe(token.text), PROMPT_PLAIN if token.prompt else None)
            return
        if expert < len(self._counts):
            self._counts[expert] += 1
        style = expert_style(expert) + (PROMPT_ROUTED if token.prompt else Style())
        self._text.append(display_piece(token.text), style)
        if "\n" in token.text:  # the mark keeps the token's colour; the line still breaks
            self._text.append("\n")

    def _rebuild(self) -> None:
        self._text = Text()
        self._counts = [0] * self.num_experts
        for token in self.tokens:
            self._append(token)
        self.refresh(layout=True)

    def legend(self) -> Text:
        total = sum(self._counts) or 1
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"L{self.shown_layer} top expert per token: ", style="dim")
        for e, n in enumerate(self._counts):
            text.append(f" {e} ", style=expert_style(e))
            text.append(f" {n / total:.0%}  ", style="dim")
        return text

    def render(self) -> Text:
        if not self.routing or self.shown_layer is None:
            return self._text
        return Text("\n").join([self.legend(), self._text])
