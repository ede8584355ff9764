"""One user-error hierarchy: the tools catch UserError and print it."""
import pickle

from mmc2f import errors


def test_hierarchy():
    for cls in (errors.ConfigError, errors.CheckpointError, errors.CheckpointFormatError,
                errors.KeyMapError, errors.UnsafeCheckpointError, errors.UnscopedTypeError):
        assert issubclass(cls, errors.UserError), cls
    # what callers caught before still catches them
    assert issubclass(errors.CheckpointFormatError, KeyError)
    assert issubclass(errors.UnsafeCheckpointError, pickle.UnpicklingError)
    # KeyError-based errors print their message without quotes
    assert str(errors.KeyMapError('a "b" c')) == 'a "b" c'
