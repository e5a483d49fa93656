"""The Textual TUI: `moedesk.tui.app.run_app(home)`. Never imports torch."""
