"""Kernel tests import the models and pool builders from ``tests.model``.

Make the project root importable even when pytest is started without it on
``sys.path`` (``pytest`` rather than ``python -m pytest``); spawned worker processes
inherit the path.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
