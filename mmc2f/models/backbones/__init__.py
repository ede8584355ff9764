from . import conv2former, mscan  # noqa: F401
