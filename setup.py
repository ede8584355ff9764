"""mmc2f's build script.

* ``install_requires`` comes from ``requirements/runtime.txt`` (compatible ranges); the exact,
  verified versions live in ``requirements/constraints.txt``, which only the repository's own
  commands (``tools/setup_env.sh``, CI) install with.
* As OpenMMLab packages do, the configs, tools, demo and ``model-index.yml`` travel inside the
  package under ``mmc2f/.mim/``: copied into the build tree for wheels and sdists, symlinked into
  the source tree for editable (``pip install -e``) installs. ``mmc2f/.mim`` is git-ignored.
"""
import os
import os.path as osp
import re
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = osp.dirname(osp.abspath(__file__))
#: Repository paths shipped under ``mmc2f/.mim/``.
MIM_ITEMS = ('configs', 'tools', 'demo', 'model-index.yml')
_IGNORE = shutil.ignore_patterns('__pycache__', '*.pyc', '*.pyo')
#: Clone-maintenance scripts (they manage the repository's .venv): not shipped.
_CLONE_ONLY = shutil.ignore_patterns('__pycache__', '*.pyc', '*.pyo', 'setup_env.sh',
                                     'run_tests.sh', 'run_demo.sh')


def read_requirements(name):
    """Requirement lines of ``requirements/<name>`` without comments."""
    reqs = []
    with open(osp.join(HERE, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line.startswith('-r '):
                reqs.extend(read_requirements(line[3:].strip()))
            elif line:
                reqs.append(line)
    return reqs


def read_version():
    with open(osp.join(HERE, 'mmc2f', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


def copy_mim_items(mim_dir):
    """Copy ``MIM_ITEMS`` from the repository into ``mim_dir`` (wheels, sdists)."""
    if osp.lexists(mim_dir):
        shutil.rmtree(mim_dir) if osp.isdir(mim_dir) and not osp.islink(mim_dir) \
            else os.remove(mim_dir)
    os.makedirs(mim_dir)
    for item in MIM_ITEMS:
        src = osp.join(HERE, item)
        if not osp.exists(src):
            continue
        dst = osp.join(mim_dir, item)
        if osp.isdir(src):
            shutil.copytree(src, dst, ignore=_CLONE_ONLY if item == 'tools' else _IGNORE)
        else:
            shutil.copyfile(src, dst)


def link_mim_items():
    """Editable installs: ``mmc2f/.mim/<item>`` -> ``../../<item>`` (copies where symlinks fail)."""
    mim_dir = osp.join(HERE, 'mmc2f', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for item in MIM_ITEMS:
        src = osp.join(HERE, item)
        dst = osp.join(mim_dir, item)
        if not osp.exists(src):
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        try:
            os.symlink(osp.relpath(src, mim_dir), dst)
        except OSError:  # e.g. Windows without the symlink privilege
            if osp.isdir(src):
                shutil.copytree(src, dst, ignore=_IGNORE)
            else:
                shutil.copyfile(src, dst)


class BuildPyWithMim(build_py):
    """``build_py`` that also puts the configs, tools, demo and model index in ``mmc2f/.mim``."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            link_mim_items()
            return
        copy_mim_items(osp.join(self.build_lib, 'mmc2f', '.mim'))


if {'develop', 'editable_wheel'} & set(sys.argv):
    link_mim_items()

setup(
    name='mmc2f',
    version=read_version(),
    description='Conv2Former and SegNeXt (MSCAN + light Hamburger) for OpenMMLab',
    long_description=open(osp.join(HERE, 'README.md')).read()
    if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmc2f', 'mmc2f.*']),
    # C++ sources that mmc2f.ops.native compiles on the user's machine at first use
    package_data={'mmc2f.ops': ['csrc/*.cpp']},
    python_requires='>=3.8',
    install_requires=read_requirements('runtime.txt'),
    extras_require={'tests': read_requirements('tests.txt'),
                    'onnxruntime': read_requirements('onnxruntime.txt')},
    entry_points={'console_scripts': ['mmc2f = mmc2f.cli:main']},
    cmdclass={'build_py': BuildPyWithMim},
    zip_safe=False,
)
