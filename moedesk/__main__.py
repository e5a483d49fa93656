"""`python -m moedesk` is the `moedesk` command."""

from moedesk.cli import main

main()
