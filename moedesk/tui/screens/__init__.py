"""TUI screens, one per module."""
