"""Numba nopython kernels for fluxon's shared-memory pool (imported as ``fluxon_kernels``).

Everything here takes numpy arrays and integers and returns integers: ``>= 0`` is
success, a negative value is one of the statuses in :mod:`fluxon_kernels.status`.
Nothing in this package imports :mod:`fluxon`.
"""

#: Layout version of the shared pool. A client refuses a pool with another major.
LAYOUT_VERSION = 1
