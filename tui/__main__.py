"""`python -m tui [RUN_DIR]`: the same as `soar tui [RUN_DIR]`."""

import sys

from tui.app import main

main(sys.argv[1] if len(sys.argv) > 1 else None)
