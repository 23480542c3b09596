"""The live processes below one, through ``ps`` (Linux and macOS alike): what a fault test left running."""

from __future__ import annotations

import subprocess


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, stat, command) of every process, through ``ps`` (Linux and macOS alike)."""
    listing = subprocess.run(
        ["ps", "-A", "-ww", "-o", "pid=,ppid=,stat=,command="], capture_output=True, text=True, check=True
    ).stdout
    table: dict[int, tuple[int, str, str]] = {}
    for line in listing.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = (int(parts[1]), parts[2], parts[3] if len(parts) > 3 else "")
    return table


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root`` (children, grandchildren...), pid -> command."""
    table = process_table()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, stat, command) in table.items():
            if ppid == parent and pid not in found and not stat.startswith("Z"):
                found[pid] = command
                frontier.append(pid)
    return found
