"""tune_cpu_allocator: large freed blocks stay in the heap for reuse (glibc's own bookkeeping)."""
import os
import subprocess
import sys

SCRIPT = r'''
import ctypes, ctypes.util
import torch
from mmc2f.utils.cpu_allocator import tune_cpu_allocator

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
