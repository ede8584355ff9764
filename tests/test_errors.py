"""One user-error hierarchy: the tools catch UserError and print it."""
import pickle

from mmc2f import errors


def test_hierarchy():
    for cls in (errors.ConfigError, errors.CheckpointError, errors.CheckpointFormatError,
                errors.KeyMapError, errors.UnsafeCheckpointError, errors.UnscopedTypeError):
        assert issubclass(cls, errors.UserError), cls
    # a run that cannot go on is not the user's input (exit status 1, not 2)
    assert not issubclass(errors.TrainingError, errors.UserError)
    # what callers caught before still catches them
    assert issubclass(errors.CheckpointFormatError, KeyError)
    assert issubclass(errors.UnsafeCheckpointError, pickle.UnpicklingError)
    # KeyError-based errors print their message without quotes
    assert str(errors.KeyMapError('a "b" c')) == 'a "b" c'
