"""moedesk: a terminal workbench for training and watching Mixture-of-Experts models.

Nothing is imported eagerly here, so `moedesk --help` and the TUI never load torch.
"""

__version__ = "0.1.0"
