"""The memory budget (``--memory-budget 4GB``) and per-stage peak memory."""

from __future__ import annotations

import os
import re
import resource

from precompute.errors import ConfigError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40}


def parse_bytes(value: str | int | float, key: str = "memory_budget") -> int:
    """``"4GB"``, ``"512MB"``, ``"2.5g"`` or a number of bytes -> bytes (binary units)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ConfigError(f"{key}: expected a size such as 4GB or 512MB (got {value!r}); fix the flag or config")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not n >= 64 * (1 << 20):
        raise ConfigError(f"{key}: must be at least 64MB (got {value!r})")
    return int(n)


def machine_memory() -> int:
    """Total physical memory in bytes (Linux ``/proc/meminfo``; 8 GB when unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def default_budget() -> int:
    """A quarter of the machine's memory, at most 8 GB: room for the model, the data and the app."""
    return int(min(machine_memory() // 4, 8 << 30))


def resolve_budget(value: str | int | None) -> int:
    return default_budget() if value in (None, "", "auto") else parse_bytes(value)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where unsupported."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak_rss` (else since start), in MB."""
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
