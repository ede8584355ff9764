from .checkpoint import (CheckpointFormatError, UnsafeCheckpointError, install_safe_loading,
                         load_checkpoint_file, load_state_dict_checked, save_checkpoint_atomic)

__all__ = [
    'CheckpointFormatError', 'UnsafeCheckpointError', 'install_safe_loading',
    'load_checkpoint_file', 'load_state_dict_checked', 'save_checkpoint_atomic'
]
