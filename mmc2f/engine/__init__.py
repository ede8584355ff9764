"""Training-time pieces: optimizer-wrapper constructors and hooks."""
from . import layer_decay  # noqa: F401
