"""mmc2f: Conv2Former and SegNeXt (MSCAN + light Hamburger) for OpenMMLab.

Importing ``mmc2f`` is light: it registers nothing heavy and imports neither mmdet nor mmseg.
Models are registered lazily when a registry first builds (``mmc2f.registry``).
"""
from .version import __version__

__all__ = ['__version__']
