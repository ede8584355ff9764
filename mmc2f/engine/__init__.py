"""Training-time pieces: optimizer-wrapper constructors and hooks."""
from . import deploy_hook, layer_decay  # noqa: F401
