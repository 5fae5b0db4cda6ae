"""The configuration layer: a directory of YAML -> typed, validated resources.

Public API (other layers import only from here)::

    from reconciler.config import load_dir, LoadResult, ParseCache, ConfigError

    result = load_dir("/etc/lbctl/conf.d", cache=ParseCache())
    if not result.valid:
        for error in result.errors:   # ConfigError, str() is file:line:col: Kind/name: path: message (hint)
            print(error)
    result.resources                  # tuple[reconciler.model.Resource, ...]
    result.digest                     # content hash, independent of file names and order

    # a CLI run: reuse the parse results persisted in the state dir (see ``persist``)
    result = load_dir_persisted("/etc/lbctl/conf.d", "/var/lib/lbctl")

See ``loader`` for the stages and ``cache`` for how re-loads reuse work.
"""

from reconciler.config.cache import ParseCache
from reconciler.config.loader import LoadResult, load_bytes, load_dir
from reconciler.config.persist import load_dir_persisted
from reconciler.errors import ConfigError

__all__ = ["ConfigError", "LoadResult", "ParseCache", "load_bytes", "load_dir", "load_dir_persisted"]
