"""How every benchmark reports: the JSON result on stdout, and in a file when asked, with the machine."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from split_infer.edge.precision import cpu_info


def emit(result: dict, path: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (a zombie keeps its figures until it is reaped)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict:
    """CPU model and the flags that decide bf16/INT8 speed (the edge's own reading), cores, platform."""
    cpu = cpu_info()
    return {"cpu": cpu["model"], "flags": cpu["flags"], "cores": os.cpu_count(), "platform": platform.platform()}
