"""The ``resilient-ws`` command's tools: ``demo``, ``probe`` and ``analyze`` (with its plot).

Applications, not library: they print, configure logging and start processes. The library
never imports this package (``tests/test_exports.py`` checks it); ``python -m
resilient_ws.tools`` runs the command (see :mod:`resilient_ws.tools.cli`).
"""
