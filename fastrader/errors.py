"""Errors that fastrader reports to users as one clear line.

Everything a user can get wrong (a file, a column, a checkpoint, a name) raises
a subclass of :class:`FastraderError`. The CLIs catch this base class and print
``error: <message>`` with a non-zero exit code instead of a traceback.
"""


class FastraderError(Exception):
    """Base class of user-facing errors; the message must say what and where."""


class DataError(FastraderError):
    """Bad market data: missing file, missing columns, bad values, bad order."""


class ExchangeError(FastraderError):
    """A permanent failure reported by an exchange (bad symbol, timeframe, auth)."""


class CacheError(FastraderError):
    """A cache file that is corrupt, foreign, or cannot be written."""


class CheckpointError(FastraderError):
    """A model checkpoint that is missing, malformed, or does not fit the model."""


class ConfigError(FastraderError):
    """Bad command-line option, config file key, or strategy name."""
