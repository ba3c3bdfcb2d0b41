"""`python -m gansvc.web ...`: the `gansvc web` command without the dispatcher (how `gansvc serve --web` starts it)."""

import sys

from gansvc.web.cli import main

if __name__ == "__main__":
    sys.exit(main())
