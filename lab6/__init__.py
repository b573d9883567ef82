"""lab6: a workbook for conditional DDPMs that draw CLEVR-style scenes from object labels."""
import os as _os

# Idle OpenMP threads spin by default, taking cores that other threads and processes need, which makes torch
# steps many times slower on a shared CPU. It must be set before torch loads, so it lives here (every entry point
# imports lab6 first).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
