"""``--profile``: one more wrk round per Bastion row with py-spy attached, summarised by function.

py-spy (from PyPI, installed into the virtualenv on first use) samples the server process and its
workers at 200 Hz in ``raw`` (collapsed stacks) format; the summary lists the functions with the
most samples on top of the stack (self) and anywhere in it (total).
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from install import ensure_py_spy
from rounds import Target
from rounds import Timing
from wrk import wrk_command


def _file_of(frame: str) -> str:
    """``bastion/gateway/server.py`` from ``FrontProtocol.write (bastion/gateway/server.py:269)``."""
    inside = frame.rpartition(" (")[2].rstrip(")")
    return inside.rpartition(":")[0] or inside


def summarise(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self and total sample shares per function, and self share per file, from py-spy ``raw``.

    The ``process …`` root frame is dropped. ``total_pct`` lists Bastion's own functions only,
    without the CLI start-up frames every sample shares, so it reads as "time under X".
    """
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    file_counts: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame and not frame.startswith("process ")]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        file_counts[_file_of(frames[-1])] += count
        for frame in set(frames):
            path = _file_of(frame)
            if path.startswith("bastion/") and not path.startswith("bastion/cli/"):
                total_counts[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return (
            [(name, round(100 * n / samples, 1)) for name, n in counter.most_common(top)] if samples else []
        )

    return {
        "samples": samples,
        "self_pct": share(self_counts),
        "total_pct": share(total_counts),
        "self_by_file_pct": share(file_counts),
    }


def profile_targets(
    targets: Sequence[Target], timing: Timing, out_dir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Profile every target that owns its service and is Python: Bastion's rows, the bare engine
    and the floor."""
    chosen = [
        t for t in targets if t.service is not None and t.key.startswith(("bastion", "engine", "floor"))
    ]
    if not chosen:
        return {}
    py_spy = ensure_py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for target in chosen:
        if target.service is None:
            continue
        seconds = max(3, round(timing.seconds))
        raw = out_dir / f"{target.key}.txt"
        log(f"profiling {target.key} for {seconds} s with py-spy")
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(target.service.pid),
                "--subprocesses",
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--duration",
                str(seconds + 1),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        subprocess.run(
            wrk_command(
                target.url,
                target.script,
                target.script_args,
                seconds=seconds,
                connections=target.connections,
                cores=target.wrk_cores,
            ),
            capture_output=True,
            check=False,
        )
        _, err = spy.communicate(timeout=seconds + 60)
        if not raw.exists():
            log(f"py-spy produced no profile for {target.key}: {err.strip()[-500:]}")
            continue
        summary = summarise(raw.read_text())
        results[target.key] = summary
        log(f"  {target.key}: {summary['samples']} samples; top self time:")
        for name, pct in summary["self_pct"][:10]:
            log(f"    {pct:5.1f}%  {name}")
        log("  self time by file:")
        for name, pct in summary["self_by_file_pct"][:8]:
            log(f"    {pct:5.1f}%  {name}")
    return results
