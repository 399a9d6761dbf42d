"""genlab core: data, models, checkpoint format and the command line.

Importing ``genlab`` itself is cheap and torch-free; torch is imported by the
submodules that need it.
"""

__version__ = "0.1.0"
