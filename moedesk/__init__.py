"""moedesk: a terminal workbench for training and watching Mixture-of-Experts models.

Nothing is imported eagerly here, so `moedesk --help` and the TUI never load torch. The
tracking API (`moedesk.init`, `moedesk.Run`; moedesk/track/) loads on first use.
"""

__version__ = "0.1.0"

_TRACK_NAMES = ("init", "Run", "TrackError")


def __getattr__(name: str):
    if name in _TRACK_NAMES:
        from moedesk import track

        return getattr(track, name)
    raise AttributeError(f"module 'moedesk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_TRACK_NAMES])
