"""Side-by-side benchmark of fluxon's MQ and the queues users would pick instead.

``python -m bench.peers`` (``make bench-peers``) runs the same workload on every peer in
one invocation and writes a Markdown report to ``bench/results/`` (see :mod:`.run`).

Layout: :mod:`.run` (runner, command line), :mod:`.harness` (worker phase loop and the
control block; standard library only, as it also runs under the reference package's own
venv), :mod:`.sysstat` (CPU accounting from ``/proc``), :mod:`.report` (tables, files,
README), :mod:`.peerbase` and one ``peer_*`` adapter module per peer.
"""
