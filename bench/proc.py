"""What /proc says about a process: CPU time, resident memory, threads (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def status(pid: int) -> dict[str, int]:
    """Resident memory (`VmRSS`, kB) and thread count (`Threads`) of `pid`."""
    fields = {}
    with open(f"/proc/{pid}/status") as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                fields[key] = int(value.split()[0])
    return fields


def rss_kb(pid: int) -> int:
    """Resident memory of `pid` in kB."""
    return status(pid).get("VmRSS", 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def postgres_cpu_seconds() -> float:
    """CPU seconds of every process named postgres (all backends of all clusters here)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
            except OSError:
                continue
    return total
