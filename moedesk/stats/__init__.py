"""The statistics part: every number computed from routing, and every metric's name.

- `names.py`: the metric-name catalogue (`train/...`, `moe/L{i}/...`, ...), the one place
  a metric is spelled; trainers, health rules, the TUI and the CLI import it.
- `load.py`: the expert-load statistics of one layer's counts (shares, load ratios, CV,
  imbalance, usage std, ...), cluster grouping and dead-expert tracking
  (docs/loadstats.md).
- `routing.py`: the routing-analysis scores (specialization by word class and token
  frequency) of the `routing/L{i}` payloads.

A ground-floor part: pure stdlib (no torch, no numpy) and no other moedesk import, so the
health engine, the TUI and the CLI read the same definitions without pulling torch in.
"""
