"""Model modules; importing this package registers them in ``mmc2f.registry.MODELS``."""
from . import backbones, decode_heads, necks  # noqa: F401
