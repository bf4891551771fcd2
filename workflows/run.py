#!/usr/bin/env python
"""Run a shipped VAP workflow headless: ``python workflows/run.py --help``. The code is ``vap_headless/cli.py``."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vap_headless.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
