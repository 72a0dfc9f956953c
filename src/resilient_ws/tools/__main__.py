"""``python -m resilient_ws.tools``: the ``resilient-ws`` command."""

from .cli import main

raise SystemExit(main())
