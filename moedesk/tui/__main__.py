"""`python -m moedesk.tui [--home DIR] [--profiles DIR]`: the TUI without the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from moedesk.paths import data_home


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moedesk.tui", description=__doc__)
    parser.add_argument("--home", help="data home (default ./runs or $MOEDESK_HOME)")
    parser.add_argument("--profiles", help="profiles folder (default ./profiles)")
    args = parser.parse_args(argv)
    from moedesk.tui.app import run_app

    run_app(data_home(args.home), Path(args.profiles) if args.profiles else None)


if __name__ == "__main__":
    main()
