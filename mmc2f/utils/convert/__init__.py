"""Key maps from the authors' checkpoint layouts to mmc2f's, with coverage checks.

The converter CLIs in ``tools/model_converters/`` are thin wrappers over these functions.
"""
from .common import KeyMapError, apply_key_map

__all__ = ['KeyMapError', 'apply_key_map']
