"""Run the terminal server with probes on its event loop, for finding where latency tails
come from; the probes cost CPU, so their runs are for diagnosis, never for the figures.

  gc        every collection's generation and pause (gc.callbacks)
  lag       a task that asks to wake every 2 ms: how late the loop wakes it (a stall)
  slow      callbacks that ran longer than 5 ms (the loop's debug mode, asyncio or uvloop)
  profile   with LOOP_PROBE_CPROFILE=1: cProfile of the whole run, into REPORT.prof

Run: .venv/bin/python bench/loop_probe.py REPORT.json [terminal server flags...]
bench/terminal.py --probe DIR runs its mixvllm server this way and prints the reports.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import terminal_server.__main__ as entry

LAG_TICK_S = 0.002
CPROFILE_ENV = "LOOP_PROBE_CPROFILE"  # set: also profile the server, into REPORT.prof


class Probes:
    def __init__(self) -> None:
        self.gc: list[tuple[int, float, int]] = []  # (generation, pause s, objects collected)
        self.lag: list[float] = []
        self.slow: list[str] = []
        self._gc_t0 = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc.append(
                (info["generation"], time.perf_counter() - self._gc_t0, info["collected"])
            )

    async def sample_lag(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            self.lag.append(time.monotonic() - t0 - LAG_TICK_S)

    def report(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            values = sorted(values) or [0.0]
            return values[min(len(values) - 1, int(q * len(values)))]

        by_gen = {
            g: [p for gen, p, _ in self.gc if gen == g] for g in sorted({g for g, _, _ in self.gc})
        }
        return {
            "gc": {
                str(g): {"count": len(ps), "max_ms": max(ps) * 1e3, "total_ms": sum(ps) * 1e3}
                for g, ps in by_gen.items()
            },
            "gc_objects_tracked_at_exit": len(gc.get_objects()),
            "gc_objects_frozen": gc.get_freeze_count(),
            "lag_ms": {
                "samples": len(self.lag),
                "p50": pct(self.lag, 0.5) * 1e3,
                "p99": pct(self.lag, 0.99) * 1e3,
                "max": max(self.lag or [0.0]) * 1e3,
                "over_5ms": sum(1 for v in self.lag if v > 0.005),
            },
            "slow_callbacks": self.slow[:40],
        }


class SlowHandler(logging.Handler):
    def __init__(self, probes: Probes) -> None:
        super().__init__()
        self.probes = probes

    def emit(self, record: logging.LogRecord) -> None:
        if "took" in record.getMessage():
            self.probes.slow.append(record.getMessage()[:200])


def main() -> int:
    out = Path(sys.argv[1])
    probes = Probes()
    gc.callbacks.append(probes.on_gc)
    serve = entry.serve

    async def probed(*args: Any, **kwargs: Any) -> int:
        loop = asyncio.get_running_loop()
        if not os.environ.get(CPROFILE_ENV):  # debug mode's tracebacks would fill a profile
            loop.set_debug(True)
            loop.slow_callback_duration = 0.005
        logging.getLogger("asyncio").addHandler(SlowHandler(probes))
        sampler = asyncio.ensure_future(probes.sample_lag())
        try:
            return await serve(*args, **kwargs)
        finally:
            sampler.cancel()
            out.write_text(json.dumps(probes.report(), indent=1))

    entry.serve = probed  # type: ignore[assignment]
    if not os.environ.get(CPROFILE_ENV):
        return entry.main(sys.argv[2:])
    profiler = cProfile.Profile()  # where the loop's time goes, by function
    try:
        return profiler.runcall(entry.main, sys.argv[2:])
    finally:
        profiler.dump_stats(out.with_suffix(".prof"))


if __name__ == "__main__":
    sys.exit(main())
