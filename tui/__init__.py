"""The Textual terminal UI for soar-agent (reads the store; never imports torch).

Start it with `soar tui [RUN_DIR]`. Modules: `queries` (paged read-only SQL), `control` (commands and
export subprocess), `app` (the app and the run screen), one module per tab or detail screen.
"""
