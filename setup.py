import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name):
    reqs = []
    with open(os.path.join(HERE, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                reqs.append(line)
    return reqs


def read_version():
    with open(os.path.join(HERE, 'mmc2f', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


setup(
    name='mmc2f',
    version=read_version(),
    description='Conv2Former and SegNeXt (MSCAN + light Hamburger) for OpenMMLab',
    long_description=open(os.path.join(HERE, 'README.md')).read() if os.path.exists(os.path.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmc2f', 'mmc2f.*']),
    python_requires='>=3.8',
    install_requires=read_requirements('stack.txt'),
    extras_require={'tests': read_requirements('tests.txt')},
    zip_safe=False,
)
