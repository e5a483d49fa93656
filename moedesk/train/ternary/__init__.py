"""The ternary kind: 243 experts over trits, hierarchical routing, Forward-Forward + Hebbian.

Entry point: `moedesk.train.ternary.loop.train_ternary`; design and figures in
docs/ternary.md.
"""
