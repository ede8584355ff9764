"""tune_cpu_allocator: large freed blocks stay in the heap for reuse (glibc's own bookkeeping)."""
import os
import subprocess
import sys

SCRIPT = r'''
import ctypes, ctypes.util
import torch
from mmc2f.engine.process import tune_cpu_allocator

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
        'fordblks', 'keepcost')]

libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.mallinfo2.restype = MallInfo2
applied = tune_cpu_allocator()
assert tune_cpu_allocator() is applied  # applied once, the same answer afterwards
mb = 2 ** 20
before = libc.mallinfo2()
a = torch.empty(6 * mb).fill_(1.0)  # a 24 MB activation
during = libc.mallinfo2()
del a
after = libc.mallinfo2()
# mmapped: the block was mapped outside the heap; kept: free bytes left in the heap after free()
print(applied, (during.hblkhd - before.hblkhd) // mb, (after.fordblks - before.fordblks) // mb)
'''


def _run(tuning):
    env = dict(os.environ, OMP_NUM_THREADS='1', MMC2F_MALLOC_TUNING=tuning)
    proc = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    applied, mmapped, kept = proc.stdout.split()
    return applied == 'True', int(mmapped), int(kept)


def test_large_blocks_stay_in_the_heap_and_tuning_can_be_turned_off():
    """Linux/glibc, the supported platform. With glibc's defaults a fresh 24 MB block is mmapped
    and returned to the kernel when freed (to be page-faulted and zeroed again next step); tuned,
    it comes from the heap and stays there for the next allocation."""
    applied, mmapped, kept = _run('1')
    assert applied and mmapped == 0 and kept >= 23, (mmapped, kept)
    applied, mmapped, kept = _run('0')
    assert not applied and mmapped >= 23 and kept < 1, (mmapped, kept)


SETUP = r'''
import torch
from mmengine.fileio.backends.registry_utils import backends
from mmengine.runner.checkpoint import CheckpointLoader
import mmc2f.registry  # runs setup_process()
from mmc2f.engine.process import applied, setup_process
setup_process()  # idempotent: nothing is logged twice
print('APPLIED', applied(), backends['local'].__name__, CheckpointLoader._schemes[''].__module__,
      any('HistoryBuffer' in str(g) for g in torch.serialization.get_safe_globals()))
'''


def _run_setup(env_extra):
    env = dict(os.environ, **env_extra)
    proc = subprocess.run([sys.executable, '-c', SETUP], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_process_setup_is_logged_once_and_can_be_turned_off():
    out = _run_setup({})
    assert out.count('mmc2f process setup:') == 2  # one line per change, once
    assert "APPLIED ['safe_loading', 'atomic_checkpoints'] AtomicLocalBackend " \
        'mmc2f.engine.process True' in out
    off = _run_setup({'MMC2F_PROCESS_SETUP': '0'})
    assert off.count('mmc2f process setup:') == 1 and 'MMC2F_PROCESS_SETUP=0' in off
    assert 'APPLIED [] LocalBackend mmengine.runner.checkpoint False' in off
