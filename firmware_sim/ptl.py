"""Simulated pick-to-light controller: a real asyncio TCP server with N tags and pickers.

It speaks ``protocols.ptl`` (host commands in, tag replies out). A lit tag is worked by a
simulated picker after a human-like delay: the :data:`Picker` decides to confirm the shown
quantity, confirm a quantity adjusted down, press shortage, or do nothing (then a test presses
with :meth:`PtlController.press`). Fault injection (:class:`Faults`): lost confirm (the press
does not reach the host; the tag stays lit and the picker presses again), a malfunction report
before the press, a repeated confirm frame, and connection drops. When the host connection drops
the controller resets its tags (dark), so the host must light them again.

``storegate sim ptl`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols import ptl

log = logging.getLogger(__name__)

DEFAULT_PORT = 4660


@dataclass(frozen=True, slots=True)
class Press:
    """A key press: ``key`` is "confirm" or "shortage"; ``qty`` the display at that moment."""

    key: str
    qty: int


# (node, shown quantity) -> what the picker does, or None to leave the tag lit.
Picker = Callable[[int, int], Press | None]


def honest_picker(node: int, qty: int) -> Press:
    return Press("confirm", qty)


def idle_picker(node: int, qty: int) -> None:
    return None


@dataclass(slots=True)
class RandomPicker:
    """Confirms; with ``p_adjust`` adjusts the quantity down first; with ``p_short`` presses
    shortage with what was found (possibly 0)."""

    p_adjust: float = 0.05
    p_short: float = 0.03
    rng: random.Random = field(default_factory=random.Random)

    def __call__(self, node: int, qty: int) -> Press:
        roll = self.rng.random()
        if roll < self.p_short:
            return Press("shortage", self.rng.randrange(0, qty) if qty > 0 else 0)
        if roll < self.p_short + self.p_adjust and qty > 1:
            return Press("confirm", self.rng.randrange(1, qty))
        return Press("confirm", qty)


@dataclass(slots=True)
class ScriptedPicker:
    """Presses from a per-node script (consumed in order), then falls back to ``default``."""

    script: dict[int, list[Press | None]]
    default: Picker = honest_picker

    def __call__(self, node: int, qty: int) -> Press | None:
        steps = self.script.get(node)
        if steps:
            return steps.pop(0)
        return self.default(node, qty)


@dataclass(slots=True)
class Faults:
    lose_confirm_rate: float = 0.0
    malfunction_rate: float = 0.0
    duplicate_confirm_rate: float = 0.0
    drop_every_frames: int | None = None  # drop the host connection after this many frames in


@dataclass(slots=True)
class Tag:
    node: int
    colour: ptl.Colour = ptl.Colour.GREEN
    digits: str | None = None  # None: dark
    times_lit: int = 0


@dataclass(slots=True)
class SimStats:
    connections: int = 0
    frames_in: int = 0
    bad_frames_in: int = 0
    lights: int = 0
    confirms_sent: int = 0
    shortages_sent: int = 0
    lost_confirms: int = 0
    duplicates_sent: int = 0
    malfunctions_sent: int = 0
    drops: int = 0


class PtlController:
    def __init__(
        self,
        *,
        nodes: int = 16,
        host: str = "127.0.0.1",
        port: int = 0,
        picker: Picker = honest_picker,
        delay_s: tuple[float, float] = (0.0, 0.0),
        faults: Faults | None = None,
        seed: int | None = None,
    ) -> None:
        if not 1 <= nodes <= ptl.MAX_NODE:
            raise ValueError(f"nodes must be 1..{ptl.MAX_NODE}, got {nodes}")
        self.host = host
        self._port = port
        self.picker = picker
        self.delay_s = delay_s
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.tags = {n: Tag(n) for n in range(1, nodes + 1)}
        self.stats = SimStats()
        self.received: list[ptl.Message] = []
        # seconds from a key press sent to the next light received on that tag (benchmark)
        self.press_to_light: list[float] = []
        self._pressed_at: dict[int, float] = {}
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._presses: dict[int, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def lit(self) -> dict[int, str]:
        return {n: t.digits for n, t in self.tags.items() if t.digits is not None}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        log.info("ptl sim: controller with %d tags on %s:%s", len(self.tags), self.host, self.port)

    async def close(self) -> None:
        for task in self._presses.values():
            task.cancel()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()
        await self.wait_until(lambda: not self._writers)

    async def __aenter__(self) -> PtlController:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def drop_connections(self) -> None:
        """Abort the host connection (as a power blip or cable pull would)."""
        for w in list(self._writers):
            self.stats.drops += 1
            w.transport.abort()

    def press(self, node: int, key: str = "confirm", qty: int | None = None, *, repeat: int = 1) -> None:
        """A picker presses a key on a lit tag now; ``repeat`` > 1 sends the frame again
        (a controller repeating a report)."""
        tag = self.tags[node]
        if tag.digits is None:
            raise ValueError(f"tag {node} is dark")
        shown = ptl.digits_quantity(tag.digits) or 0
        self._send_press(tag, Press(key, shown if qty is None else qty), repeat=repeat)

    # ------------------------------------------------------------------ internals

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _reply(self, msg: ptl.Reply) -> None:
        if self._writer is not None:
            self._writer.write(ptl.encode(msg))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # one host at a time: a new one replaces the old
            self._writer.close()
        self._writer = writer
        self._writers.add(writer)
        self.stats.connections += 1
        self._poke()
        decoder = ptl.Decoder(ptl.Direction.TO_TAG)
        frames = 0
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                try:
                    msgs = decoder.feed(data)
                except ptl.FramingError as e:
                    log.warning("ptl sim: host framing lost: %s", e)
                    msgs = e.events
                    for m in msgs:
                        self._on_command(m)
                    break
                for m in msgs:
                    frames += 1
                    self._on_command(m)
                    drop = self.faults.drop_every_frames
                    if drop is not None and frames >= drop:
                        self.stats.drops += 1
                        writer.transport.abort()
                        break
                self._poke()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            if self._writer is writer:
                self._writer = None
                self._reset_tags()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._poke()

    def _reset_tags(self) -> None:
        for task in self._presses.values():
            task.cancel()
        self._presses.clear()
        for tag in self.tags.values():
            tag.digits = None

    def _targets(self, node: int) -> list[Tag]:
        if node == ptl.BROADCAST:
            return list(self.tags.values())
        tag = self.tags.get(node)
        return [] if tag is None else [tag]

    def _on_command(self, msg: ptl.Message) -> None:
        self.stats.frames_in += 1
        self.received.append(msg)
        if isinstance(msg, ptl.BadFrame):
            self.stats.bad_frames_in += 1
            node = msg.frame[7] if len(msg.frame) > 7 and msg.frame[7] != 0 else 1
            self._reply(ptl.IllegalCommand(node=node, subcmd=msg.frame[6]))
            return
        if not isinstance(msg, ptl.COMMANDS):
            return
        targets = self._targets(msg.node)
        if not targets:
            self._reply(ptl.TagTimeout(node=msg.node, port=msg.port))
            return
        for tag in targets:
            match msg:
                case ptl.SetColour(colour=colour):
                    tag.colour = colour
                case ptl.ShowDigits(digits=digits):
                    pressed = self._pressed_at.pop(tag.node, None)
                    if pressed is not None:
                        self.press_to_light.append(time.perf_counter() - pressed)
                    tag.digits = digits
                    tag.times_lit += 1
                    self.stats.lights += 1
                    self._schedule(tag)
                case ptl.Clear():
                    tag.digits = None
                    self._cancel_press(tag.node)
                case ptl.ResetTag():
                    tag.digits = None
                    self._cancel_press(tag.node)
                    self._reply(ptl.ResetOk(node=tag.node, port=msg.port))
                case _:
                    pass

    def _cancel_press(self, node: int) -> None:
        task = self._presses.pop(node, None)
        if task is not None:
            task.cancel()

    def _schedule(self, tag: Tag) -> None:
        self._cancel_press(tag.node)
        task = asyncio.get_running_loop().create_task(self._picker_works(tag), name=f"ptl-sim-tag-{tag.node}")
        self._presses[tag.node] = task

    async def _picker_works(self, tag: Tag) -> None:
        lo, hi = self.delay_s
        await asyncio.sleep(self.rng.uniform(lo, hi) if hi > 0 else 0)
        if tag.digits is None:
            return
        press = self.picker(tag.node, ptl.digits_quantity(tag.digits) or 0)
        if press is None:
            return
        f = self.faults
        if f.malfunction_rate and self.rng.random() < f.malfunction_rate:
            self.stats.malfunctions_sent += 1
            self._reply(ptl.Malfunction(node=tag.node, code=0x01))
        if press.key == "confirm" and f.lose_confirm_rate and self.rng.random() < f.lose_confirm_rate:
            self.stats.lost_confirms += 1
            log.info("ptl sim: confirm on tag %s lost; the picker will press again", tag.node)
            await asyncio.sleep(self.rng.uniform(lo, hi) if hi > 0 else 0)
            if tag.digits is None:
                return
        repeat = 2 if f.duplicate_confirm_rate and self.rng.random() < f.duplicate_confirm_rate else 1
        self._presses.pop(tag.node, None)
        self._send_press(tag, press, repeat=repeat)

    def _send_press(self, tag: Tag, press: Press, *, repeat: int = 1) -> None:
        digits = ptl.quantity_digits(press.qty)
        msg: ptl.Reply
        if press.key == "confirm":
            msg = ptl.Confirmed(node=tag.node, digits=digits)
            self.stats.confirms_sent += 1
        elif press.key == "shortage":
            msg = ptl.Shortage(node=tag.node, digits=digits)
            self.stats.shortages_sent += 1
        else:
            raise ValueError(f"unknown key {press.key!r}")
        self.stats.duplicates_sent += repeat - 1
        tag.digits = None  # the tag goes dark by itself on a key press
        self._cancel_press(tag.node)
        for _ in range(repeat):
            self._reply(msg)
        self._pressed_at[tag.node] = time.perf_counter()
        self._poke()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="storegate sim ptl",
        description="Simulated ABLEPick-style pick-to-light controller (TCP server) with pickers.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--nodes", type=int, default=24, help="number of tags, addresses 1..N (default 24)")
    p.add_argument("--delay-min", type=float, default=0.8, help="picker delay lower bound, s (default 0.8)")
    p.add_argument("--delay-max", type=float, default=3.0, help="picker delay upper bound, s (default 3.0)")
    p.add_argument("--p-adjust", type=float, default=0.05, help="chance a picker adjusts the quantity down")
    p.add_argument("--p-short", type=float, default=0.03, help="chance a picker presses shortage")
    p.add_argument("--lose-confirm", type=float, default=0.0, help="chance a confirm is lost")
    p.add_argument("--malfunction", type=float, default=0.0, help="chance of a malfunction report")
    p.add_argument("--duplicate-confirm", type=float, default=0.0, help="chance a confirm is sent twice")
    p.add_argument("--drop-every", type=int, default=None, help="drop the host link every N frames")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("-v", "--verbose", action="store_true", help="log every frame")
    return p


async def _serve_forever(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    sim = PtlController(
        nodes=args.nodes,
        host=args.host,
        port=args.port,
        picker=RandomPicker(p_adjust=args.p_adjust, p_short=args.p_short, rng=rng),
        delay_s=(args.delay_min, args.delay_max),
        faults=Faults(
            lose_confirm_rate=args.lose_confirm,
            malfunction_rate=args.malfunction,
            duplicate_confirm_rate=args.duplicate_confirm,
            drop_every_frames=args.drop_every,
        ),
        seed=args.seed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        print(f"ptl sim listening on {args.host}:{sim.port} with {args.nodes} tags", flush=True)
        await stop.wait()
    print(f"ptl sim stopped: {sim.stats}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    asyncio.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
