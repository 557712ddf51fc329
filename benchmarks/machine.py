"""What the benchmarks report about the machine they ran on."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict:
    """What a benchmark's JSON line reports about the machine: CPU, core count and the load
    at the end (the machine may be shared while timings are taken)."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_avg_1min_end": os.getloadavg()[0]}
