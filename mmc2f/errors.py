"""mmc2f's user-error types: one hierarchy for the tools, the APIs and the checkpoint package.

Every error that a user can fix (a config key, a file, a flag) derives from :class:`UserError`;
the command-line tools print its message as ``<tool>: error: ...`` and exit with status 2.
"""
import pickle

__all__ = ['UserError', 'TrainingError', 'ConfigError', 'CheckpointError', 'CheckpointFormatError',
           'UnsafeCheckpointError', 'KeyMapError', 'UnscopedTypeError']


class UserError(RuntimeError):
    """A problem with the user's input (config, command line, data or checkpoint)."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss or weights); the message says what to try. Not the
    user's input: the tools print it and exit with status 1."""


class ConfigError(UserError):
    """A config or command-line option that cannot work; the message names the key and the fix."""


class _KeyMessage:
    """``KeyError`` quotes its message; keep it readable."""

    def __str__(self):
        return str(self.args[0]) if self.args else ''


class UnscopedTypeError(_KeyMessage, ConfigError, KeyError):
    """A config names an mmc2f module without the ``mmc2f.`` prefix."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used as asked."""


class CheckpointFormatError(_KeyMessage, CheckpointError, KeyError):
    """A checkpoint's keys do not match the model it is loaded into."""


class KeyMapError(_KeyMessage, CheckpointError, KeyError):
    """A checkpoint's keys do not fit a known layout (a converter's key map)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint holds a pickled object outside mmc2f's allow-list."""
