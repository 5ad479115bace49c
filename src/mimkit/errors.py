"""The errors a user can fix: bad config, missing data, a corrupt checkpoint, an unreadable import. Each is a
UserError, which the CLI and the demo report in one line, without a traceback, exiting with code 2. They live apart
from the config module so that data, models, methods and distillation can raise them without importing the config
that validates them."""


class UserError(Exception):
    """Base of every error the user can fix (mixed into the standard exception each one also is)."""


class ConfigError(UserError, ValueError):
    """A config problem the user can fix; the CLI prints it without a traceback and exits with code 2."""


def check(cond: bool, message: str) -> None:
    """Validation: raise ConfigError(message) unless `cond` holds."""
    if not cond:
        raise ConfigError(message)


def one_of(key: str, value: object, choices: list) -> None:
    """Validation: `value` of config key `key` must be one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, choices))}")
