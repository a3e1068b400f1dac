"""The one base class of the errors a user can fix; entry points print their message in one line."""


class UserError(Exception):
    """Bad input the user controls: the message names the file, list line, checkpoint or config key."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or pretrained file cannot be used: empty, corrupt, holding code, in no known layout, not
    finite, or from another config."""


class ConfigError(UserError, ValueError):
    """A config key is unknown or has a value of the wrong type or out of its range."""
