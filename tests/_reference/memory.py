"""Structural memory checks: what autograd saves for backward, counted by storage."""
from typing import Callable, Iterable, Optional, Tuple

import torch


def saved_bytes(fn: Callable[[], object], exclude: Iterable[Optional[torch.Tensor]] = ()
                ) -> Tuple[int, object]:
    """``(bytes, fn())``: the bytes of the unique storages autograd saves while ``fn()`` runs,
    storages of ``exclude`` (weights, inputs) left out."""
    skip = {t.untyped_storage().data_ptr() for t in exclude if t is not None}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(seen.values()), result
