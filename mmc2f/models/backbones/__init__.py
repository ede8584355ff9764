from . import conv2former, conv2former_iso, mscan  # noqa: F401
