"""The attach contract between a training process and the supervisor of its external run.

Pure stdlib, like protocol.py: both sides import it (moedesk/track/ must stay light).

- Under `moedesk watch`, the supervisor starts the command with these environment
  variables; a `moedesk.init` inside (or in any process it starts) appends its events to
  `MOEDESK_EVENTS` and so joins that run instead of creating one.
- Elsewhere `moedesk.init` starts `python -m moedesk.runner.external attach --home H
  --pid PID`, writes its `started` event as one JSON line on the supervisor's stdin and
  reads one JSON line back: {run_id, name, run_dir, events} or {error}.
"""

from __future__ import annotations

ENV_HOME = "MOEDESK_HOME"  # the data home (also what `moedesk --home` defaults to)
ENV_RUN_ID = "MOEDESK_RUN_ID"  # the watched run's id
ENV_RUN_NAME = "MOEDESK_RUN_NAME"  # its name
ENV_RUN_DIR = "MOEDESK_RUN_DIR"  # its folder
ENV_EVENTS = "MOEDESK_EVENTS"  # its events file: append one protocol event per os.write

# how long `moedesk.init` waits for the supervisor's answer: startup, then at worst the
# store's busy timeout (30 s) behind another writer
HANDSHAKE_TIMEOUT_S = 90.0
