from . import conv2former_neck  # noqa: F401
