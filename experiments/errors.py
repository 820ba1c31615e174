"""Errors a user can fix: the command line prints their message and exits nonzero, without a traceback."""


class UserError(Exception):
    """A problem with the input (data, configuration, earlier results) whose message says the fix."""


class DataError(UserError):
    """A data file is missing, truncated, corrupt or not in the expected format."""


class ConfigError(UserError):
    """A configuration key is unknown, missing or has a wrong value."""
