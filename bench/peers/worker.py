"""Script entry of a worker started as a plain subprocess (``python worker.py SPEC.json``).

Used for peers whose client library lives in another interpreter (the reference package
in its own venv). The repository root is appended to ``sys.path`` so ``bench.peers`` is
importable without shadowing anything that interpreter has installed.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    """Load the spec file named on the command line and run the worker."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.append(root)
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # this folder holds modules named like third-party packages' users
    from bench.peers.harness import worker_entry

    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    worker_entry(cfg, None)


if __name__ == "__main__":
    main()
