"""The ``resilient-ws`` command line.

Subcommands:

``demo``
    A client and a local ``serve()`` server through a GIL stall, a dead network, a dropped
    connection and a server restart, shown live, with a summary (``demo.py``).

``probe URL``
    Like ``ping`` for a WebSocket server (``probe.py``).

``analyze LOG...``
    Print an incident report from the library's JSON-lines log events (``analyze.py``).

``_demo-server PORT`` (hidden)
    The ``serve()`` echo server the demo runs in a subprocess. It prints ``ready`` once it
    listens on 127.0.0.1:PORT.

The library itself never prints; this module is an application and does.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from .._logging import configure_json_logging
from . import analyze, demo, probe

__all__ = ["main"]

PROG = "resilient-ws"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``resilient-ws`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status: 0 on success, 1 when the command ran and failed, 2 for a
        usage error, 130 when interrupted.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    # The server helper is parsed apart, so that no help or error message names it.
    hidden = arguments[:1] == [demo.SERVER_COMMAND]
    parser = _build_server_parser() if hidden else _build_parser()
    try:
        args = parser.parse_args(arguments[1:] if hidden else arguments)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if hidden:
            return demo.run_server(args.port, exit_with_stdin=args.exit_with_stdin)
        if args.command is None:
            parser.print_usage(sys.stderr)
            print(f"{PROG}: error: a command is required", file=sys.stderr)
            return 2
        if args.command == "probe":
            return probe.run_probe(
                args.url, count=args.count, interval=args.interval, as_json=args.json
            )
        if args.command == "analyze":
            return analyze.run(args.logs, as_json=args.json, plot=args.plot)
        return _run_demo(args.backend, args.network, json_logs=args.json_logs)
    except BaseException as exc:
        if _interrupted(exc):
            return 130
        raise


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, possibly inside task groups' exception groups (trio)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    inner: tuple[BaseException, ...] = getattr(exc, "exceptions", ())
    return any(_interrupted(child) for child in inner)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A WebSocket client that stays connected: tools and demo."
    )
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    demo_command = commands.add_parser(
        "demo",
        help="watch a client survive a GIL stall, a dead network and server restarts",
        description=(
            "Start a resilient_ws server in a subprocess and a client that sends numbered "
            "messages every 20 ms through a local proxy; stall the server's GIL, kill the "
            "network (iptables when root, else the proxy), drop the connection and restart "
            "the server, showing RTT, timeout, verdict and server lag live. Exits 0 when "
            "nothing was lost or duplicated and every fault was handled. About 30 s."
        ),
    )
    demo_command.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="anyio backend of the client (default: %(default)s)",
    )
    demo_command.add_argument(
        "--network",
        choices=("auto", "iptables", "proxy"),
        default="auto",
        help="how to kill the network: iptables (needs root), the proxy, or auto: iptables "
        "when root and available (default: %(default)s)",
    )
    demo_command.add_argument(
        "--json-logs",
        action="store_true",
        help="also write the library's structured log events as JSON lines to stderr",
    )
    probe_command = commands.add_parser(
        "probe",
        help="like ping, for a WebSocket server: RTT, timeout, server lag, TCP state",
        description=(
            "Connect to URL and probe the idle link every --interval seconds; print the "
            "smoothed RTT, the adaptive timeout, the server's loop lag (resilient_ws "
            "servers), the TCP state and the verdict, and every disconnect with its verdict. "
            "Exits 0 when the link was up at every interval."
        ),
    )
    probe_command.add_argument("url", help="ws:// or wss:// URL")
    probe_command.add_argument("--count", type=_positive_int, help="stop after N intervals")
    probe_command.add_argument(
        "--interval", type=_positive_float, default=1.0, help="seconds (default: %(default)s)"
    )
    probe_command.add_argument("--json", action="store_true", help="one JSON object per line")
    analyze_command = commands.add_parser(
        "analyze",
        help="print an incident report from the library's JSON-lines log events",
        description=(
            "Read the JSON-lines events written by configure_json_logging() and print an "
            "incident report: uptime per connection, disconnects by verdict and cause, time "
            "to reconnect, messages replayed, gaps and server stalls. Bad lines are counted, "
            "never fatal. See docs/analyze.md."
        ),
    )
    analyze_command.add_argument(
        "logs", nargs="*", metavar="LOG", help="log files; '-' or none reads standard input"
    )
    analyze_command.add_argument("--json", action="store_true", help="print the report as JSON")
    analyze_command.add_argument(
        "--plot",
        metavar="OUT.png",
        help="also draw a timeline into this PNG file (pip install 'resilient_ws[cli]')",
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.01 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.01 and 3600 seconds")
    return value


def _build_server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {demo.SERVER_COMMAND}",
        description="A resilient_ws echo server on 127.0.0.1; prints 'ready' once listening.",
    )
    parser.add_argument("port", type=int)
    parser.add_argument(
        "--exit-with-stdin", action="store_true", help="exit when standard input closes"
    )
    return parser


def _run_demo(backend: str, network: str, *, json_logs: bool) -> int:
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        print(f"{PROG}: error: trio is not installed (pip install trio)", file=sys.stderr)
        return 2
    if json_logs:
        configure_json_logging(sys.stderr)
    return demo.run_demo(backend, network)


if __name__ == "__main__":
    raise SystemExit(main())
