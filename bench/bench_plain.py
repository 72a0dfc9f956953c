"""Plain mode through a dead network: what arrives at a server without the replay protocol.

    sudo python bench/bench_plain.py [--runs 3] [--backend asyncio|trio]
                                     [--modes silent,answering] [--json]

Per run, two plain websockets servers in child processes (compression off, their keepalive
off) number what they receive, in arrival order, per link. Two clients send to them at once,
a message every ``--interval`` (10 ms) for ``--messages`` (600): the raw websockets client
with its defaults (ping every 20 s, 20 s timeout; on ``ConnectionClosed`` it reconnects and
goes on with the next message), and ``resilient_ws.connect()`` on defaults (it offers the
replay protocol; the servers do not speak it). From message ``--drop-at`` (150) iptables
DROPs every segment to and from both servers' ports (INPUT on loopback, both directions,
unique ports, rules deleted in ``finally``) for ``--drop-for`` seconds (3).

Modes: ``silent`` servers never write; ``answering`` servers answer each message with a short
text (a server that acknowledges orders at the application level): an answer that reaches a
socket the client has closed makes its kernel reset the connection.

For each client: messages lost (never arrived), reordered (arrived, for the first time, after
a message sent later), duplicates (arrived more than once), links (connections the server
saw), and for resilient_ws what its ``Resent`` events reported: messages resent, and how many
of them it said may be duplicates (``uncertain``). Target (issue 9): resilient_ws 0 lost,
0 reordered, duplicates <= reported, on defaults; raw websockets alongside in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import sniffio
from _benchutil import free_port

import resilient_ws

HOST = "127.0.0.1"
TAG = "resilient_ws-bench-plain"  # iptables comment on every rule this script inserts
SETTLE = 20.0  # longest wait for the servers to get everything after the last send
ANSWER = "ok"


# ---- the server (child process) ----------------------------------------------------------


def serve(port: int, answering: bool) -> None:
    """A plain websockets server: record ``[link, message]``; ``/report`` returns them."""
    from websockets.asyncio.server import serve as ws_serve

    arrivals: list[list[Any]] = []
    links = 0

    async def handler(ws: Any) -> None:
        nonlocal links
        if ws.request.path == "/report":
            await ws.send(json.dumps(arrivals))
            return
        links += 1
        link = links
        with suppress(Exception):
            async for message in ws:
                arrivals.append([link, message])
                if answering:
                    await ws.send(ANSWER)

    async def main() -> None:
        async with ws_serve(handler, HOST, port, compression=None, ping_interval=None):
            print("ready", flush=True)
            await asyncio.Future()

    asyncio.run(main())


@contextmanager
def child_server(answering: bool) -> Iterator[int]:
    port = free_port()
    command = [sys.executable, __file__, "--serve", str(port)] + (
        ["--answering"] if answering else []
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("server did not start")
        yield port
    finally:
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


async def report(port: int) -> list[list[Any]]:
    """The server's arrivals, fetched with a client of the running backend."""
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect
    else:
        from websockets.asyncio.client import connect  # type: ignore[assignment]
    async with connect(f"ws://{HOST}:{port}/report", compression=None) as ws:
        return list(json.loads(await ws.recv()))


# ---- iptables ----------------------------------------------------------------------------


def iptables_unavailable() -> str | None:
    if shutil.which("iptables") is None:
        return "iptables is not installed"
    if os.geteuid() != 0:
        return "iptables needs root"
    return None


def iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", "10", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def dropped(ports: list[int]) -> Iterator[None]:
    """DROP every segment to or from each port on loopback, both directions."""
    rules = [
        ["INPUT", "-i", "lo", "-p", "tcp", f"--{end}", str(port),
         "-m", "comment", "--comment", TAG, "-j", "DROP"]
        for port in ports for end in ("dport", "sport")
    ]  # fmt: skip
    added: list[list[str]] = []
    try:
        for rule in rules:
            iptables("-I", *rule)
            added.append(rule)
        yield
    finally:
        for rule in added:
            iptables("-D", *rule)


# ---- the clients -------------------------------------------------------------------------


@dataclass
class Outcome:
    client: str
    sent: int = 0
    resent: int | None = None
    reported_uncertain: int | None = None
    lost: int = 0
    reordered: int = 0
    duplicates: int = 0
    links: int = 0
    events: list[str] = field(default_factory=list)


class Clock:
    """The common schedule of one run: message i is due at start + i * interval."""

    def __init__(self, interval: float) -> None:
        self.start = anyio.current_time() + 0.2
        self.interval = interval

    async def until(self, index: int) -> None:
        await anyio.sleep_until(self.start + index * self.interval)


async def raw_client(port: int, args: argparse.Namespace, clock: Clock, out: Outcome) -> None:
    """websockets with its defaults; a send that fails is not retried (a typical app)."""
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect
    else:
        from websockets.asyncio.client import connect  # type: ignore[assignment]
    from websockets.exceptions import ConnectionClosed

    index = 0
    while index < args.messages:
        try:
            async with (
                connect(f"ws://{HOST}:{port}/", compression=None) as ws,
                anyio.create_task_group() as group,
            ):
                group.start_soon(drain, ws)
                while index < args.messages:
                    await clock.until(index)
                    index += 1
                    await ws.send(str(index - 1))
                    out.sent += 1
                group.cancel_scope.cancel()
        except (ConnectionClosed, OSError) as exc:
            out.events.append(f"raw: {type(exc).__name__} at message {index}")
            await anyio.sleep(0.1)


async def drain(ws: Any) -> None:
    with suppress(Exception):
        while True:
            await ws.recv()


async def resilient_client(port: int, args: argparse.Namespace, clock: Clock, out: Outcome) -> None:
    resent = uncertain = 0
    # Absent before resilient_ws resent plain links' messages: the bench still runs there.
    resent_event: Any = getattr(resilient_ws, "Resent", ())
    async with resilient_ws.connect(f"ws://{HOST}:{port}/") as ws:
        async with anyio.create_task_group() as group:
            group.start_soon(drain, ws)
            for index in range(args.messages):
                await clock.until(index)
                await ws.send(str(index))
                out.sent += 1
            await anyio.sleep(1.0)  # let the last messages leave before closing
            group.cancel_scope.cancel()
        with anyio.move_on_after(0.5):  # the history holds every event so far
            async for event in ws.events():
                if isinstance(event, resent_event):
                    resent += event.resent
                    uncertain += event.uncertain
                if isinstance(event, (resent_event, resilient_ws.Disconnected)):
                    out.events.append(repr(event))
    out.resent, out.reported_uncertain = resent, uncertain


async def outage(ports: list[int], args: argparse.Namespace, clock: Clock) -> None:
    await clock.until(args.drop_at)
    with dropped(ports):
        await anyio.sleep(args.drop_for)


def score(out: Outcome, arrivals: list[list[Any]], messages: int) -> None:
    seen: set[int] = set()
    highest = -1
    for _, message in arrivals:
        number = int(message)
        if number in seen:
            out.duplicates += 1
            continue
        seen.add(number)
        out.reordered += number < highest
        highest = max(highest, number)
    out.lost = messages - len(seen & set(range(messages)))
    out.links = len({link for link, _ in arrivals})


async def one_run(args: argparse.Namespace, answering: bool) -> list[Outcome]:
    raw, resilient = Outcome("raw websockets"), Outcome("resilient_ws")
    with child_server(answering) as raw_port, child_server(answering) as port:
        clock = Clock(args.interval)
        async with anyio.create_task_group() as group:
            group.start_soon(raw_client, raw_port, args, clock, raw)
            group.start_soon(resilient_client, port, args, clock, resilient)
            group.start_soon(outage, [raw_port, port], args, clock)
        for out, server_port in ((raw, raw_port), (resilient, port)):
            deadline = time.monotonic() + SETTLE
            while True:
                arrivals = await report(server_port)
                got = {int(message) for _, message in arrivals}
                if len(got) >= args.messages or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.5)
            score(out, arrivals, args.messages)
    return [raw, resilient]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--answering", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--modes", default="silent,answering")
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--drop-at", type=int, default=150)
    parser.add_argument("--drop-for", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="print each client's events")
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.answering)
        return
    reason = iptables_unavailable()
    if reason is not None:
        sys.exit(f"bench_plain needs iptables: {reason}")
    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        for run in range(1, args.runs + 1):
            outcomes = anyio.run(one_run, args, mode == "answering", backend=args.backend)
            for out in outcomes:
                rows.append({"mode": mode, "run": run, **asdict(out)})
    if args.json:
        print(json.dumps({"backend": args.backend, "args": vars(args), "rows": rows}, indent=1))
        return
    print(
        f"plain websockets server, a message every {args.interval * 1000:g} ms, "
        f"{args.messages} messages, iptables DROP for {args.drop_for:g} s from message "
        f"{args.drop_at}; backend {args.backend}; resilient_ws on defaults"
    )
    header = (
        f"{'mode':<10} {'run':>3}  {'client':<15} {'sent':>5} {'lost':>5} {'reordered':>9} "
        f"{'dups':>5} {'resent':>6} {'reported':>8} {'links':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        resent = "-" if row["resent"] is None else row["resent"]
        reported = "-" if row["reported_uncertain"] is None else row["reported_uncertain"]
        print(
            f"{row['mode']:<10} {row['run']:>3}  {row['client']:<15} {row['sent']:>5} "
            f"{row['lost']:>5} {row['reordered']:>9} {row['duplicates']:>5} {resent:>6} "
            f"{reported:>8} {row['links']:>5}"
        )
        if args.verbose:
            for line in row["events"]:
                print(f"{'':>21}{line}")
    print("(sent: messages the client's send() accepted; reported: of the messages it")
    print(" resent, how many resilient_ws said may be duplicates. Target: 0 lost, 0 reordered,")
    print(" dups <= reported, for resilient_ws.)")
    mine = [row for row in rows if row["client"] == "resilient_ws"]
    met = all(
        row["lost"] == 0
        and row["reordered"] == 0
        and row["duplicates"] <= row["reported_uncertain"]
        for row in mine
    )
    print("TARGET MET" if met else "TARGET NOT MET")


if __name__ == "__main__":
    main()
