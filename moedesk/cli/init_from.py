"""`moedesk run --init-from`'s check: the checkpoint must fit the profile's model before any
run is created (torch imported here, inside the command only)."""

from __future__ import annotations

from pathlib import Path

from moedesk.profiles import Profile
from moedesk.runner import launch
from moedesk.runner.init_from import resolve_init


def start_from_weights(profile: Profile, home: Path, source: str, **options) -> launch.Launched:
    """Resolve, check the tensors (clear error naming one), then start the run."""
    info, ckpt = resolve_init(profile, home, source)
    from moedesk.train.init_from import InitError, check_init

    try:
        check_init(profile, ckpt.path)
    except InitError as exc:
        raise launch.RunError(f"--init-from {source}: {exc}") from None
    return launch.start_run(profile, home, init_from=(info, ckpt), **options)
