"""The sans-I/O core: the wire format, replay numbering, resume arithmetic, liveness
verdicts, the retry policy, the connection state table and the session store.

Nothing here opens a socket, sleeps or reads a clock: callers pass ``now`` and bytes in
and act on what comes back. ``tests/test_layers.py`` holds this package to that: it
imports no anyio, websockets, trio, socket or time, and nothing from ``resilient_ws._io``.
"""
