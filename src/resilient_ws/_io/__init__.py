"""The I/O layer: the only code that moves bytes, sleeps or reads a clock.

The websockets boundary (``backend``), the socket options and ``tcp_info`` reads
(``sockopts``), the shared timers, the loop-lag monitor and watchdog, the keepalive that
drives :mod:`resilient_ws._core.liveness`, and the links that carry replayed messages.
"""
