"""``python -m bench.peers``; see :mod:`bench.peers.run`."""

if __name__ == "__main__":  # spawned workers import this module too: keep it inert
    import sys

    from bench.peers.run import main

    sys.exit(main())
