"""The Textual terminal UI for soar-agent (reads the store; never imports torch)."""
