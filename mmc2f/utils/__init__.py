from .checkpoint import (AtomicLocalBackend, CheckpointFormatError, UnsafeCheckpointError,
                         extract_state_dict, find_resumable_checkpoint,
                         install_atomic_checkpointing, install_safe_loading, is_intact_checkpoint,
                         load_checkpoint_file, load_state_dict_checked, save_checkpoint_atomic)

__all__ = [
    'AtomicLocalBackend', 'CheckpointFormatError', 'UnsafeCheckpointError', 'extract_state_dict',
    'find_resumable_checkpoint', 'install_atomic_checkpointing', 'install_safe_loading',
    'is_intact_checkpoint', 'load_checkpoint_file', 'load_state_dict_checked',
    'save_checkpoint_atomic'
]
