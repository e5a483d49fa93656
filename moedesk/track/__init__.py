"""moedesk's tracking API for training it did not write (docs/tracking.md).

    run = moedesk.init(name="mixtral-ft", config={...}, tags=["sweep3"])
    run.log({"train/loss": 2.1}, step=1)
    run.log_expert_load({0: counts_layer0, 1: counts_layer1}, step=1, top_k=2)
    run.finish()

`init` and `Run` live in start.py and run.py; events travel through channel.py; the
router hooks of `Run.watch_router` are router.py (the only part that imports torch).
No sqlite here: the run's supervisor (runner/external.py) is its only writer.
"""

from moedesk.track.run import Run, TrackError
from moedesk.track.start import init

__all__ = ["init", "Run", "TrackError"]
