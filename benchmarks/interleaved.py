"""Runtimes timed in interleaved rounds, each in its own spawned worker process (bench_quant, bench_int8_qdq).

The child side, `serve(build, connection)`, answers the parent over a Pipe: ("time", n) -> one untimed call, then n
call durations in ms; ("outputs", batch) -> the runtime's outputs by name; ("stop",). The parent side, `interleave`,
starts one worker per runtime, drops (or fails on) those that do not get ready, gathers every live runtime's outputs
on the same inputs, then times them in rounds: per round, each runtime in turn, so that a drifting load on a shared
machine falls on all of them alike.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def serve(build: Callable, connection) -> None:
    """Build (timed call, batch -> outputs by name) with `build()`, say "ready" (or ("error", one line)), then serve."""
    try:
        call, outputs = build()
        call()
    except Exception as exc:  # reported by the parent as one line
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ready",))
    while True:
        request = connection.recv()
        if request[0] == "stop":
            break
        if request[0] == "outputs":
            connection.send({name: np.asarray(value) for name, value in outputs(request[1]).items()})
            continue
        call()  # one untimed call: another runtime's threads may still be spinning
        durations = []
        for _ in range(request[1]):
            start = time.perf_counter()
            call()
            durations.append(1000 * (time.perf_counter() - start))
        connection.send(durations)


@dataclass(frozen=True)
class Timing:
    """One runtime's call durations in ms, one list per round."""

    blocks: list[list[float]]

    @property
    def durations(self) -> list[float]:
        return [ms for block in self.blocks for ms in block]

    @property
    def median(self) -> float:
        return statistics.median(self.durations)

    @property
    def p90(self) -> float:
        return float(np.percentile(self.durations, 90))

    @property
    def best_round(self) -> float:
        """The lowest per-round median: what a quiet machine shows."""
        return min(statistics.median(block) for block in self.blocks)

    def paired_ratio(self, other: Timing) -> float:
        """The median over rounds of this round's median / `other`'s in the same round."""
        return statistics.median(
            statistics.median(own) / statistics.median(theirs) for own, theirs in zip(self.blocks, other.blocks)
        )


def interleave(
    worker: Callable,
    runtimes: tuple[str, ...],
    arguments: tuple,
    inputs: Callable[[], np.ndarray],
    rounds: int,
    calls: int,
    not_ready: Callable[[str, str], None],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Timing]]:
    """Outputs on `inputs()` (made once the workers are ready) and timings of every runtime whose worker,
    `worker(runtime, *arguments, connection)` (it calls `serve`), gets ready, in the order of `runtimes`.
    `not_ready(runtime, message)` hears of the others: it raises to stop, or returns to leave the runtime out."""
    context = multiprocessing.get_context("spawn")
    workers = {}
    for runtime in runtimes:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker, args=(runtime, *arguments, child_end), daemon=True)
        process.start()
        child_end.close()  # so that a worker's death reads as EOF
        workers[runtime] = (process, parent_end)
    try:
        live = {
            runtime: connection for runtime, (_, connection) in workers.items() if ready(runtime, connection, not_ready)
        }
        batch, outputs = inputs(), {}
        for runtime, connection in live.items():
            connection.send(("outputs", batch))
            outputs[runtime] = connection.recv()
        blocks = {runtime: [] for runtime in live}  # one list of call durations per round
        for _ in range(rounds):
            for runtime, connection in live.items():
                connection.send(("time", calls))
                blocks[runtime].append(connection.recv())
    finally:
        for process, connection in workers.values():
            with contextlib.suppress(OSError):
                connection.send(("stop",))
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
    return outputs, {runtime: Timing(runtime_blocks) for runtime, runtime_blocks in blocks.items()}


def ready(runtime: str, connection, not_ready: Callable[[str, str], None]) -> bool:
    """Whether the worker said "ready"; if not, `not_ready` hears why (and may raise)."""
    try:
        reply = connection.recv()
    except EOFError:
        reply = ("error", "the worker exited")
    if reply[0] == "ready":
        return True
    not_ready(runtime, reply[1])
    return False
