"""Generates docs/profiles.md from the schema: `python -m moedesk.profiles.docs > docs/profiles.md`.

The schema's field metadata is the single source; a test checks the doc lists every key.
"""

from __future__ import annotations

from moedesk.health.thresholds import RULES
from moedesk.profiles.schema import SECTIONS, TOP_LEVEL, section_fields

INTRO = """# Run profiles

A profile is a TOML file under `profiles/` describing one training run. `moedesk run
PROFILE` and the TUI validate it fully before anything starts: unknown keys, wrong types,
out-of-range values and cross-field rules each give one line naming the file, the dotted
key, the bad value and what is allowed, and no run is created. `--set section.key=value`
overrides go through the same validation (values are TOML: `--set train.lr=1e-3`,
`--set moe.moe_layers=[1]`; bare words are strings: `--set data.source=text`).

`moedesk profiles show PROFILE` prints the resolved profile with every default filled in;
`moedesk profiles validate FILES...` checks files without running anything.

Sections apply by kind: `dense` reads `[model]`; `topk` reads `[model]` and `[moe]`;
`ternary` reads `[ternary]`; all kinds read `[train]`, `[data]`, `[checkpoint]` and
`[health]`. A section a kind does not read is allowed (so a dense and a topk profile can
differ only in `kind`) and ignored.

This file is generated from `moedesk/profiles/schema.py`
(`python -m moedesk.profiles.docs > docs/profiles.md`).

## Cross-field rules
- `model.dim` divisible by `model.n_heads`, and `dim / n_heads` even (rotary embeddings)
- `model.n_heads` divisible by `model.n_kv_heads`
- `data.seq_len <= model.max_seq_len`; `train.warmup_steps <= train.steps`
- `moe.top_k <= moe.num_experts`; `moe.moe_layers` distinct indices in `0..n_layers-1`;
  `moe.skip_first_n_moe < model.n_layers`
- `data.source` `text`, `tokens` or `trits` needs an existing `data.path` (relative paths
  are taken from the profile's folder); `trits` only for ternary, `tokens` not for ternary
- ternary: see `docs/ternary.md` (243 experts need hierarchical selection, clusters must
  be able to hold the active experts, ...)
- several processes (`docs/distributed.md`): `train.nproc_per_node x train.nnodes` ranks;
  the ternary kind trains in one process; `train.nnodes > 1` needs
  `train.rdzv_endpoint` = HOST:PORT; `moe.expert_parallel > 1` only for topk, dividing
  `moe.num_experts` and the world size, with `moe.dispatch = 'sorted'`
"""


def _range(meta: dict) -> str:
    if meta.get("choices"):
        return " \\| ".join(f"`{c}`" for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return ""
    left = ">" if meta.get("min_exclusive") else ">="
    if hi is None:
        return f"{left} {lo}"
    return f"{lo} to {hi}" if not meta.get("min_exclusive") else f"> {lo}, <= {hi}"


def render() -> str:
    out = [INTRO, "## Top level", "", "| key | type | meaning |", "| --- | --- | --- |"]
    for key, (typ, help_text) in TOP_LEVEL.items():
        out.append(f"| `{key}` | {typ.__name__} | {help_text} |")
    for section in SECTIONS:
        out += ["", f"## [{section}]", "", "| key | type | default | allowed | meaning |",
                "| --- | --- | --- | --- | --- |"]
        for name, type_name, default, meta in section_fields(section):
            if section == "health" and name == "rules":
                continue
            shown = f"`{default!r}`".replace("'", '"') if default != "" else '`""`'
            only = f" ({', '.join(meta['kinds'])} only)" if meta.get("kinds") else ""
            out.append(f"| `{section}.{name}` | {type_name} | {shown} | {_range(meta)} | "
                       f"{meta['help']}{only} |")
    out += ["", "### [health.RULE]", "",
            "Each health rule's thresholds can be overridden in its own table, e.g.",
            "`[health.loss_spike]` `factor = 2.0`; `enabled = false` turns a rule off. Rules",
            "and their parameters (defaults; see `docs/health.md` for meaning and sources):", ""]
    for rule in RULES.values():
        params = ", ".join(f"`{k} = {v!r}`".replace("True", "true").replace("False", "false")
                           for k, v in rule.params.items())
        out.append(f"- `health.{rule.name}` ({', '.join(rule.kinds)}): {params}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
