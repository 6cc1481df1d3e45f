"""User-facing errors: a user's mistake is shown as one line (CLI exit 2, HTTP 4xx), never a traceback."""


class LoraforgeError(Exception):
    """A problem the user can fix; the message says what and where."""


class ConfigError(LoraforgeError):
    """A config file or override is invalid; the message names the key."""


class ModelNotFoundError(LoraforgeError):
    """A base model or adapter name could not be resolved."""


class DataError(LoraforgeError):
    """A data file is missing, unreadable or lacks a column the config names."""
