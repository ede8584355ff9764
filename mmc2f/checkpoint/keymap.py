"""Checkpoint key maps: rename every key by a rule, with full coverage checks."""
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from mmc2f.errors import KeyMapError

__all__ = ['KeyMapError', 'Rule', 'apply_key_map', 'short_keys']

Rule = Tuple[str, Union[str, Callable[[re.Match], Optional[str]]]]


def short_keys(keys: Iterable[str], n: int = 5) -> str:
    """The first ``n`` keys, and how many there are in all."""
    keys = list(keys)
    text = ', '.join(keys[:n])
    return text + (f', ... ({len(keys)} in all)' if len(keys) > n else '')


def apply_key_map(state_dict: Dict[str, torch.Tensor], rules: Sequence[Rule],
                  expected: Optional[Iterable[str]] = None, drop: Sequence[str] = (),
                  what: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """Rename every key of ``state_dict`` by the first matching rule.

    Args:
        rules: ``(regex, replacement)`` pairs tried in order; the regex must match the whole key.
            A replacement is a ``re.sub`` template or a callable ``match -> new key``.
        expected: the keys the result must have exactly (e.g. a freshly built model's state dict).
        drop: regexes of keys that are deliberately discarded (e.g. optimizer-only buffers).
        what: a name for the source, used in error messages.

    Raises:
        KeyMapError: a key matched no rule, two keys map to one, or (with ``expected``) the result
            misses or adds keys. The message names the first offenders.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    dropped = [re.compile(p) for p in drop]
    out: Dict[str, torch.Tensor] = {}
    unmapped: List[str] = []
    for key, value in state_dict.items():
        if any(d.fullmatch(key) for d in dropped):
            continue
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m is None:
                continue
            new = repl(m) if callable(repl) else m.expand(repl)
            if new is None:
                continue
            if new in out:
                raise KeyMapError(f'{what}: two keys map to "{new}" (the second is "{key}")')
            out[new] = value
            break
        else:
            unmapped.append(key)
    if unmapped:
        raise KeyMapError(f'{what}: {len(unmapped)} key(s) match no known layout: '
                          f'{short_keys(unmapped)}. Is this the right converter for this checkpoint?')
    if expected is not None:
        expected = list(expected)
        exp_set = set(expected)
        missing = [k for k in expected if k not in out]
        extra = [k for k in out if k not in exp_set]
        if missing or extra:
            parts = [f'{what}: the converted keys do not match the model:']
            if missing:
                parts.append(f'missing {short_keys(missing)}')
            if extra:
                parts.append(f'unexpected {short_keys(extra)}')
            raise KeyMapError(' '.join(parts))
    return out
