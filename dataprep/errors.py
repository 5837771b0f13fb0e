"""The data-prep error type, below every module that raises it."""


class DataprepError(Exception):
    """A clear, one-line failure of a data-prep run (bad input under --on-error fail, I/O, options)."""
