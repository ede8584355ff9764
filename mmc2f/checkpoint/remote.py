"""Checkpoints from URLs and MMEngine's named schemes, loaded like local files.

MMEngine's loaders for ``http(s)://`` (and ``open-mmlab://``, ``torchvision://``, ``mmcls://``,
which resolve to a URL and call ``load_from_http``) use torch.hub's ``load_state_dict_from_url``,
which unpickles everything (code included); ``s3://`` / ``petrel://`` / ``pavi://`` call
``torch.load`` themselves. The loaders here fetch the bytes the same way (a download lands in
torch.hub's cache, ``torch.hub.get_dir()/checkpoints/<basename of the URL path>``, where torch.hub
would put it) and read them with :func:`~mmc2f.checkpoint.io.load_checkpoint_file`
(``weights_only=True`` plus the allow-list). :data:`SCHEMES` maps MMEngine's prefixes to them;
``engine.process.setup_process`` registers them with MMEngine's ``CheckpointLoader``.
"""
import io
import os
import os.path as osp
import re
import sys
import urllib.error
from typing import Callable, Dict, Optional
from urllib.parse import urlparse

from mmc2f.errors import CheckpointError
from .io import file_mode_from_umask, load_checkpoint_file

__all__ = ['SCHEMES', 'load_checkpoint', 'load_from_http', 'hub_cache_file', 'download_to_cache']


def hub_cache_file(url: str, model_dir: Optional[str] = None,
                   file_name: Optional[str] = None) -> str:
    """Where torch.hub keeps the download of ``url``."""
    if model_dir is None:
        import torch.hub
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, file_name or osp.basename(urlparse(url).path))


def download_to_cache(url: str, model_dir: Optional[str] = None, progress: bool = False,
                      file_name: Optional[str] = None) -> str:
    """The cache file of ``url``, downloaded first if absent (torch.hub's downloader writes a
    temporary file and renames it, so an interrupted download leaves no cache entry)."""
    import torch.hub
    cached = hub_cache_file(url, model_dir, file_name)
    if not osp.isfile(cached):
        os.makedirs(osp.dirname(cached), exist_ok=True)
        sys.stderr.write(f'Downloading: "{url}" to {cached}\n')
        try:
            torch.hub.download_url_to_file(url, cached, None, progress=progress)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise CheckpointError(f'cannot download checkpoint "{url}": {err}') from err
        try:
            os.chmod(cached, file_mode_from_umask())  # torch.hub's temp file is 0600
        except OSError:
            pass
    return cached


def _load_cached(url: str, cached: str, map_location):
    """Load a downloaded file; a damaged one is named with its URL and how to refetch it."""
    source = f'{url}" (cached as "{cached}'
    try:
        return load_checkpoint_file(cached, map_location=map_location, source=source)
    except CheckpointError as err:
        if type(err) is CheckpointError:  # damaged, not refused
            raise CheckpointError(f'{err}; delete "{cached}" to download it again') from err
        raise


def load_from_http(filename: str, map_location=None, model_dir: Optional[str] = None,
                   progress: bool = os.isatty(0)):
    """``http(s)://`` checkpoints: download into torch.hub's cache (rank 0 first in a distributed
    run, as MMEngine does), then load with ``weights_only=True`` and the allow-list."""
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    if rank == 0:
        cached = download_to_cache(filename, model_dir, progress)
    if world_size > 1:
        import torch.distributed
        torch.distributed.barrier()
        if rank > 0:
            cached = download_to_cache(filename, model_dir, progress)
    return _load_cached(filename, cached, map_location)


def load_url(url, model_dir=None, map_location=None, progress=True, check_hash=False,
             file_name=None):
    """Stand-in for ``torch.hub.load_state_dict_from_url`` inside MMEngine (same cache, safe
    loading; ``check_hash`` is not supported and ignored, as MMEngine never sets it)."""
    return _load_cached(url, download_to_cache(url, model_dir, progress, file_name),
                        map_location)


def _named_url(table: Callable[[], Dict[str, str]], name: str, filename: str) -> str:
    urls = table()
    if name not in urls:
        raise CheckpointError(f'unknown checkpoint name "{filename}": MMEngine\'s model table has '
                              f'no entry "{name}"')
    return urls[name]


def load_from_openmmlab(filename: str, map_location=None):
    """``open-mmlab://NAME`` / ``openmmlab://NAME``: MMEngine's table gives a URL or a file
    under MMEngine's home."""
    from mmengine.logging import print_log
    from mmengine.runner import checkpoint as mmckpt
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    name = filename[len(prefix):]
    deprecated = mmckpt.get_deprecated_model_names()
    if name in deprecated:
        print_log(f'{prefix}{name} is deprecated in favor of {prefix}{deprecated[name]}',
                  logger='current', level=30)
        name = deprecated[name]
    url = _named_url(mmckpt.get_external_models, name, filename)
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location=map_location)
    path = osp.join(mmckpt._get_mmengine_home(), url)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint "{filename}" -> "{path}" does not exist')
    return load_checkpoint_file(path, map_location=map_location, source=f'{filename}" ("{path}')


def load_from_torchvision(filename: str, map_location=None):
    """``torchvision://NAME`` (and the deprecated ``modelzoo://NAME``)."""
    from mmengine.runner import checkpoint as mmckpt
    name = filename.split('://', 1)[1]
    url = _named_url(mmckpt.get_torchvision_models, name, filename)
    return load_from_http(url, map_location=map_location)


def load_from_mmcls(filename: str, map_location=None):
    """``mmcls://NAME``: the URL from MMEngine's table; the weights re-keyed as MMEngine does."""
    from mmengine.runner import checkpoint as mmckpt
    url = _named_url(mmckpt.get_mmcls_models, filename[len('mmcls://'):], filename)
    return mmckpt._process_mmcls_checkpoint(load_from_http(url, map_location=map_location))


def load_from_ceph(filename: str, map_location=None, backend: str = 'petrel'):
    """``s3://`` / ``petrel://`` (optionally ``name:s3://``): the bytes through MMEngine's file
    backend, read from memory."""
    from mmengine.fileio import get_file_backend
    data = get_file_backend(filename, backend_args={'backend': backend}).get(filename)
    with io.BytesIO(data) as buffer:
        return load_checkpoint_file(buffer, map_location=map_location, source=filename)


def load_from_pavi(filename: str, map_location=None):
    """``pavi://``: downloaded to a temporary folder by pavi's model cloud, then read."""
    import tempfile
    try:
        from pavi import modelcloud
    except ImportError as err:
        raise CheckpointError(f'"{filename}" needs the pavi package') from err
    model = modelcloud.get(filename[len('pavi://'):])
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, model.name)
        model.download(path)
        return load_checkpoint_file(path, map_location=map_location, source=filename)


def load_from_local(filename, map_location=None):
    """A local path (``~`` expanded)."""
    return load_checkpoint_file(osp.expanduser(os.fspath(filename)), map_location=map_location)


#: MMEngine's ``CheckpointLoader`` prefixes (regexes, as MMEngine matches them) -> safe loaders.
SCHEMES: Dict[str, Callable] = {
    '': load_from_local,
    'http://': load_from_http,
    'https://': load_from_http,
    'open-mmlab://': load_from_openmmlab,
    'openmmlab://': load_from_openmmlab,
    'torchvision://': load_from_torchvision,
    'modelzoo://': load_from_torchvision,
    'mmcls://': load_from_mmcls,
    'pavi://': load_from_pavi,
    r'(\S+\:)?s3://': load_from_ceph,
    r'(\S+\:)?petrel://': load_from_ceph,
}


def load_checkpoint(filename, map_location='cpu'):
    """Load a checkpoint from a local path or any MMEngine scheme, safely, whether or not the
    process setup has registered :data:`SCHEMES` with MMEngine."""
    if not isinstance(filename, str):
        return load_checkpoint_file(filename, map_location=map_location)
    # longest prefix first, as MMEngine does
    for prefix in sorted(SCHEMES, reverse=True):
        if prefix and re.match(prefix, filename):
            return SCHEMES[prefix](filename, map_location)
    return load_from_local(filename, map_location)
