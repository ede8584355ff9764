from . import ham_head, nmf  # noqa: F401
