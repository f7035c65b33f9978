"""Public home of the dask path, as documented: ``fcnkit.distributed.predict_dask``.

The implementation is :mod:`fcnkit.inference.dask`; this module only names it where users look for it.
"""

from fcnkit.inference.dask import close, connect, min_tiles, predict_dask, predict_into

__all__ = ["close", "connect", "min_tiles", "predict_dask", "predict_into"]
