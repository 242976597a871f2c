"""The service plane's long-running processes.

- :mod:`fluxon.service.owner`: one per node and cluster; creates the shared-memory pool,
  heartbeats, reaps dead local members, registers the node in etcd.
- :mod:`fluxon.service.master`: one per cluster; registers in etcd and serves the
  monitoring HTTP API.

Both run as ``python -m fluxon.service.owner|master --config-b64 B64 | --config PATH``.
"""
