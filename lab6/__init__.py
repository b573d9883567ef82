"""lab6: a workbook for conditional DDPMs that draw CLEVR-style scenes from object labels."""

__version__ = "0.1.0"
