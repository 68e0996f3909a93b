"""What the bench scripts share: the RESULTS.md file and its sections, and the run's machine, command and load.

Imported by the scripts beside it (`python bench/X.py` puts bench/ first on sys.path), not run itself.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmarks\n\nEach section is written by the script it names, with the command and machine it ran on.\n"


def cpu_model() -> str:
    """The CPU's model name: lscpu's, else /proc/cpuinfo's, else platform.processor() (not Linux)."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:  # no lscpu
        lscpu = ""
    for line in lscpu.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(*details: str) -> str:
    """`<CPU model>, <N> logical CPUs, <details>...`: the Machine line of a results section."""
    return ", ".join([cpu_model(), f"{os.cpu_count()} logical CPUs", *details])


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as uptime prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_facts(argv: list[str] | None) -> dict[str, str]:
    """The command (as typed, or `argv` when main() was called with it), the UTC date and the load before."""
    return {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]] if argv is None else argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": loadavg(),
    }


def section_header(heading: str, r: dict, load_note: str) -> list[str]:
    """A section's first lines: heading, command, date, machine, load before/after (with `load_note`), wall time."""
    return [
        heading,
        "",
        f"Command: `{r['command']}`  ",
        f"Date: {r['date']}  ",
        f"Machine: {r['machine']}  ",
        f"Load (uptime) before / after: {r['load_before']} / {r['load_after']} ({load_note})  ",
        f"Wall time of the whole run: {r['wall_s'] / 60:.1f} min",
        "",
    ]


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section under `heading` in `path` (up to the next `## ` heading), or append it; others kept."""
    text = path.read_text() if path.exists() else HEADER
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


def seed_log(log: Path, row: dict | None = None) -> list[dict]:
    """A per-seed results file (JSON lines): append `row` when given (as soon as a seed finishes, so a stopped
    bench keeps what it measured); every row recorded."""
    if row is not None:
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def finish(heading: str, facts: dict, started: float, lines: list[str], results: Path, dry: bool) -> None:
    """Print the section (header with the run's facts, then `lines`) and, unless `dry`, write it to `results`."""
    facts.update(machine=machine("CPU only"), load_after=loadavg(), wall_s=time.perf_counter() - started)
    section = section_header(heading, facts, "the box's other work adds noise to wall times") + lines
    print("\n".join(section))
    if not dry:
        write_section(results, heading, "\n".join(section) + "\n")


def publish(section: str, path: Path | None, heading: str) -> None:
    """Print the section; when `path` is given, also write it there (write_section) and say so."""
    print("\n" + section)
    if path is not None:
        write_section(path, heading, section)
        print(f"wrote {path}")
