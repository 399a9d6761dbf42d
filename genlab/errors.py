"""Errors that a user can fix (bad flags, missing files, corrupt artifacts).

The command line turns a ``GenlabError`` into one readable line and exit code 2;
anything else is a bug and keeps its traceback.
"""


class GenlabError(Exception):
    """A problem with the user's input, reported without a traceback."""
