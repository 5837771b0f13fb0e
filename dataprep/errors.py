"""The data-prep error type, below every module that raises it, and how a path is printed in one."""

import os


class DataprepError(Exception):
    """A clear, one-line failure of a data-prep run (bad input under --on-error fail, I/O, options)."""


def printable_path(path) -> str:
    """A path as text that can be printed and stored as UTF-8 (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
