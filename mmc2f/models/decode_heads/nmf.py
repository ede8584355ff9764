# NMF of Hamburger (Geng et al., ICLR 2021: https://github.com/Gsunshine/Enjoy-Hamburger), as used by SegNeXt
# (https://github.com/Visual-Attention-Network/SegNeXt).
"""NMF2D: the matrix decomposition ("ham") inside SegNeXt's light Hamburger.

Geng et al., "Is Attention Better Than Matrix Decomposition?" (ICLR 2021). No parameters; no mmseg
import. With ``x`` of shape ``(B, C, H, W)`` split into ``S`` groups of ``D = C / S`` channels and
``N = H W`` pixels, each ``X`` in ``(B S, D, N)`` (non-negative: it follows a ReLU) is factorised as
``X ~= Bs C^T`` with bases ``Bs`` ``(B S, D, R)`` and coefficients ``C`` ``(B S, N, R)``::

    Bs_0 = normalize_D(U[0, 1)),          C_0 = softmax_R(X^T Bs_0)              (temperature 1)
    repeat K times (K = train_steps in training, eval_steps in eval):
        C  <- C  * (X^T Bs) / (C (Bs^T Bs) + eps)
        Bs <- Bs * (X C)    / (Bs (C^T C)  + eps)
    C <- C * (X^T Bs) / (C (Bs^T Bs) + eps)                   (one last coefficient update)
    output  Bs C^T  reshaped to (B, C, H, W).

Multiplicative updates keep everything non-negative. By default the bases are drawn uniformly on
every forward from the global CPU generator with exactly the calls of mmseg 1.2.2's ``NMF2D``
(``torch.rand((B*S, D, R))`` on CPU, moved to the input's device), so with the same seed the output
equals mmseg's. Beyond mmseg, this module offers:

* ``eval_seed``: reproducible evaluation, independent of the global RNG, the process and the batch;
* fp32 computation under autocast / for half inputs (the products overflow in fp16);
* ``one_step_grad``: the iterations run without autograd except the last coefficient update;
* nothing device-specific (no ``.cuda()``); tensors follow the input's device.
"""
import contextlib
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['NMF2D', 'normalize_ham_kwargs', 'measure_backward_memory']

#: The authors' (HamNet) upper-case option names -> NMF2D's keywords.
HAM_KWARG_ALIASES = {
    'MD_S': 'md_s', 'MD_R': 'md_r', 'TRAIN_STEPS': 'train_steps', 'EVAL_STEPS': 'eval_steps',
    'INV_T': 'inv_t', 'RAND_INIT': 'rand_init',
}
NMF_KWARGS = ('md_s', 'md_r', 'train_steps', 'eval_steps', 'inv_t', 'rand_init', 'eval_seed',
               'one_step_grad', 'eps')


def normalize_ham_kwargs(ham_kwargs: Optional[dict]) -> dict:
    """Map ``ham_kwargs`` to :class:`NMF2D`'s lower-case keywords.

    Accepts the lower-case names, mmseg's ``MD_S``/``MD_R`` and the authors' upper-case names
    (``MD_S, MD_R, TRAIN_STEPS, EVAL_STEPS, INV_T, RAND_INIT``). A name given twice with different
    values, or an unknown name, raises ``TypeError`` naming the accepted keys.
    """
    out: dict = {}
    for key, value in dict(ham_kwargs or {}).items():
        name = HAM_KWARG_ALIASES.get(key, key)
        if name not in NMF_KWARGS:
            raise TypeError(f'NMF2D: unknown ham_kwargs key "{key}"; accepted: '
                            f'{list(NMF_KWARGS)} and the upper-case aliases '
                            f'{list(HAM_KWARG_ALIASES)}')
        if name in out and out[name] != value:
            raise TypeError(f'NMF2D: "{name}" given twice with different values '
                            f'({out[name]!r} and {value!r} via "{key}")')
        out[name] = value
    return out


def _autocast_off(device_type: str):
    """Disable autocast for ``device_type`` inside the block (no-op where autocast is unknown)."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, TypeError, ValueError):
        pass
    return contextlib.nullcontext()


def _result_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` would return: the autocast dtype when autocast is on."""
    try:
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
    except (RuntimeError, TypeError, ValueError):
        pass
    return x.dtype


class NMF2D(nn.Module):
    """Non-negative matrix factorisation by multiplicative updates (see the module docstring).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``, ``C`` divisible by ``md_s``.

    Args:
        md_s (int): groups ``S`` (alias ``MD_S``). Default 1.
        md_r (int): rank ``R`` (alias ``MD_R``). Default 64 (SegNeXt configs use 16 or 64).
        train_steps (int): updates in training (``TRAIN_STEPS``). Default 6.
        eval_steps (int): updates in eval mode (``EVAL_STEPS``). Default 7.
        inv_t (float): accepted for config compatibility (``INV_T``) and ignored: as in mmseg's and
            the authors' NMF2D, the initial softmax uses temperature 1.
        rand_init (bool): draw new bases every forward (``RAND_INIT``). ``False``: one fixed set of
            bases, a persistent buffer ``bases`` of shape ``(S, D, R)`` (needs ``channels``).
        eval_seed (int, optional): **reproducible evaluation**. ``None`` (default): eval bases come
            from the global RNG as in mmseg, so predictions change from run to run. An int: in eval
            mode the bases are drawn on CPU from a private ``torch.Generator`` seeded with it on
            every forward, shape ``(S, D, R)``, and shared by all samples; the output for an image
            is then the same in every run, process and batch (position or size). Training is
            unaffected.
        one_step_grad (bool): run the initialisation and the K updates under ``torch.no_grad`` and
            back-propagate only through the final coefficient update (HamNet's one-step gradient:
            same forward output, O(1) backward memory in K). Default ``False`` (full unrolled
            gradient, as mmseg).
        eps (float): added to the denominators. Default 1e-6.
        channels (int, optional): ``C``; only needed for ``rand_init=False``.

    Mixed precision: the factorisation always runs in fp32 (fp64 input stays fp64) with autocast
    disabled; the result is cast to the autocast dtype when autocast is on, else to the input dtype.
    """

    def __init__(self, md_s: int = 1, md_r: int = 64, train_steps: int = 6, eval_steps: int = 7,
                 inv_t: float = 100, rand_init: bool = True, eval_seed: Optional[int] = None,
                 one_step_grad: bool = False, eps: float = 1e-6, channels: Optional[int] = None,
                 **aliases):
        super().__init__()
        given = normalize_ham_kwargs(aliases)
        explicit = dict(md_s=md_s, md_r=md_r, train_steps=train_steps, eval_steps=eval_steps,
                        inv_t=inv_t, rand_init=rand_init, eval_seed=eval_seed,
                        one_step_grad=one_step_grad, eps=eps)
        defaults = dict(md_s=1, md_r=64, train_steps=6, eval_steps=7, inv_t=100, rand_init=True,
                        eval_seed=None, one_step_grad=False, eps=1e-6)
        for name, value in given.items():
            if explicit[name] != defaults[name] and explicit[name] != value:
                raise TypeError(f'NMF2D: "{name}" given twice with different values')
            explicit[name] = value
        self.md_s = int(explicit['md_s'])
        self.md_r = int(explicit['md_r'])
        self.train_steps = int(explicit['train_steps'])
        self.eval_steps = int(explicit['eval_steps'])
        self.inv_t = explicit['inv_t']  # recorded only; temperature is 1 (see docstring)
        self.rand_init = bool(explicit['rand_init'])
        self.one_step_grad = bool(explicit['one_step_grad'])
        self.eps = float(explicit['eps'])
        self.channels = channels
        self.eval_seed = explicit['eval_seed']
        if self.md_s < 1 or self.md_r < 1 or self.train_steps < 0 or self.eval_steps < 0:
            raise ValueError('NMF2D: md_s, md_r must be >= 1 and the step counts >= 0')
        if not self.rand_init:
            if channels is None or channels % self.md_s:
                raise ValueError('NMF2D: rand_init=False needs channels (divisible by md_s) to '
                                 'create its fixed bases')
            self.register_buffer('bases', self._draw_bases(self.md_s, channels // self.md_s))

    def extra_repr(self) -> str:
        return (f'S={self.md_s}, R={self.md_r}, train_steps={self.train_steps}, '
                f'eval_steps={self.eval_steps}, rand_init={self.rand_init}, '
                f'eval_seed={self.eval_seed}, one_step_grad={self.one_step_grad}')

    # ------------------------------------------------------------------ bases
    @property
    def eval_seed(self) -> Optional[int]:
        return self._eval_seed

    @eval_seed.setter
    def eval_seed(self, seed: Optional[int]) -> None:
        """Setting it draws the eval-time bases once (a non-persistent buffer): no generator is
        created in ``forward``, so compiled graphs do not break there."""
        self._eval_seed = None if seed is None else int(seed)
        bases = None
        if self._eval_seed is not None and self.channels is not None \
                and self.channels % self.md_s == 0:
            bases = self._seeded_bases(self.channels // self.md_s)
        self.register_buffer('eval_bases', bases, persistent=False)

    def _seeded_bases(self, dim: int) -> torch.Tensor:
        gen = torch.Generator(device='cpu')
        gen.manual_seed(self._eval_seed)
        return self._draw_bases(self.md_s, dim, generator=gen)

    def _draw_bases(self, num: int, dim: int, generator: Optional[torch.Generator] = None,
                    device=None) -> torch.Tensor:
        """``num`` sets of ``R`` uniform bases in ``R^dim``, L2-normalised over ``dim``.

        Drawn on CPU (fp32) and then moved: this is exactly mmseg's ``torch.rand(...).to(device)``,
        so the global-RNG path consumes the CPU generator identically on every device.
        """
        bases = torch.rand((num, dim, self.md_r), generator=generator)
        if device is not None:
            bases = bases.to(device)
        return F.normalize(bases, dim=1)

    def initial_bases(self, batch: int, dim: int, device, dtype) -> torch.Tensor:
        """Bases ``(batch * S, D, R)`` for one forward (see ``rand_init`` and ``eval_seed``)."""
        if not self.rand_init:
            bases = self.bases.to(device=device, dtype=dtype)
            return bases.repeat(batch, 1, 1)
        if not self.training and self._eval_seed is not None:
            bases = self.eval_bases
            if bases is None or bases.shape[1] != dim:  # built without channels
                bases = self._seeded_bases(dim)
            return bases.to(device=device, dtype=dtype).repeat(batch, 1, 1)
        return self._draw_bases(batch * self.md_s, dim, device=device).to(dtype)

    # ------------------------------------------------------------------ updates
    def update_coef(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """``C <- C * (X^T Bs) / (C (Bs^T Bs) + eps)``: ``(BS, N, R)``."""
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * numerator / (denominator + self.eps)

    def update_bases(self, x: torch.Tensor, bases: torch.Tensor,
                     coef: torch.Tensor) -> torch.Tensor:
        """``Bs <- Bs * (X C) / (Bs (C^T C) + eps)``: ``(BS, D, R)``."""
        numerator = torch.bmm(x, coef)
        denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
        return bases * numerator / (denominator + self.eps)

    def iterate(self, x: torch.Tensor, bases: torch.Tensor, steps: int):
        """Initial coefficients and ``steps`` alternating updates; returns ``(bases, coef)``."""
        coef = F.softmax(torch.bmm(x.transpose(1, 2), bases), dim=-1)
        for _ in range(steps):
            coef = self.update_coef(x, bases, coef)
            bases = self.update_bases(x, bases, coef)
        return bases, coef

    def decompose(self, x: torch.Tensor, bases: torch.Tensor, steps: Optional[int] = None):
        """Factorise ``x`` ``(BS, D, N)`` from initial ``bases``; returns ``(bases, coef)``."""
        if steps is None:
            steps = self.train_steps if self.training else self.eval_steps
        if self.one_step_grad:
            with torch.no_grad():
                bases, coef = self.iterate(x, bases, steps)
        else:
            bases, coef = self.iterate(x, bases, steps)
        return bases, self.update_coef(x, bases, coef)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f'NMF2D expects (B, C, H, W) input, got shape {tuple(x.shape)}')
        B, C, H, W = x.shape
        if C % self.md_s:
            raise ValueError(f'NMF2D: channels {C} not divisible by md_s={self.md_s}')
        out_dtype = _result_dtype(x)
        compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        with _autocast_off(x.device.type):
            flat = x.reshape(B * self.md_s, C // self.md_s, H * W).to(compute_dtype)
            bases = self.initial_bases(B, C // self.md_s, flat.device, compute_dtype)
            bases, coef = self.decompose(flat, bases)
            out = torch.bmm(bases, coef.transpose(1, 2))
        return out.reshape(B, C, H, W).to(out_dtype)


def measure_backward_memory(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor
                            ) -> Dict[str, Optional[int]]:
    """Memory that one forward + backward of ``fn(*inputs)`` needs.

    Runs ``fn(*inputs).float().sum().backward()`` once and returns

    * ``saved_bytes``: bytes of the distinct tensor storages autograd saved for backward (measured
      with ``torch.autograd.graph.saved_tensors_hooks``; exact and device-independent; this is what
      the one-step gradient reduces);
    * ``peak_bytes``: on CUDA, the peak allocated memory above the level before the call
      (``torch.cuda.max_memory_allocated``); ``None`` on other devices.

    Example (what ``tools/analysis_tools/benchmark.py`` can call)::

        x = torch.rand(2, 256, 64, 64, requires_grad=True)
        full = measure_backward_memory(NMF2D(md_r=16).train(), x)
        one = measure_backward_memory(NMF2D(md_r=16, one_step_grad=True).train(), x)
    """
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. sparse / nested tensors
            storages[id(t)] = t.numel() * t.element_size()
        return t

    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), torch.device('cpu'))
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    out.float().sum().backward()
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return dict(saved_bytes=int(sum(storages.values())), peak_bytes=peak)
