"""`python -m lab6 ...` runs the command-line interface."""
import sys

from .cli import main

sys.exit(main())
