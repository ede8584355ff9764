"""Every checkpoint enters and leaves mmc2f through this package.

* :mod:`.io`: allow-listed ``weights_only`` loading, atomic saving, resume discovery;
* :mod:`.remote`: URLs and MMEngine's named schemes, loaded through :mod:`.io`;
* :mod:`.state_dict`: weights inside a checkpoint (one list of container layouts), prefixes,
  checked loading into a module;
* :mod:`.keymap`: rule-based key maps with coverage checks (the converters' building block).
"""
from mmc2f.errors import CheckpointError, CheckpointFormatError, KeyMapError, UnsafeCheckpointError
from .io import (AtomicLocalBackend, check_output_path, file_mode_from_umask,
                 find_resumable_checkpoint, is_intact_checkpoint, load_checkpoint_file,
                 remove_stale_temp_files, safe_globals, save_checkpoint_atomic)
from .keymap import apply_key_map
from .remote import load_checkpoint
from .state_dict import (EMA_KEYS, WEIGHT_KEYS, compare_state_dict, extract_state_dict,
                         find_state_dict, load_into_model, load_pretrained_weights,
                         load_state_dict_checked, mismatch_cause, strip_prefix)

__all__ = [
    'CheckpointError', 'CheckpointFormatError', 'KeyMapError', 'UnsafeCheckpointError',
    'AtomicLocalBackend', 'find_resumable_checkpoint', 'is_intact_checkpoint',
    'load_checkpoint_file', 'safe_globals', 'save_checkpoint_atomic', 'apply_key_map', 'EMA_KEYS',
    'WEIGHT_KEYS', 'extract_state_dict', 'find_state_dict', 'load_pretrained_weights',
    'load_state_dict_checked', 'strip_prefix', 'load_checkpoint', 'remove_stale_temp_files',
    'file_mode_from_umask', 'check_output_path', 'compare_state_dict', 'mismatch_cause',
    'load_into_model'
]
