"""Allow `python -m gansvc`."""
import sys

from gansvc.cli import main

sys.exit(main())
