"""Is another workflow run using this working tree? Asked by every DVC stage before it runs Snakemake.

``dvc repro`` runs one Snakemake per stage. While a plain ``snakemake`` run holds the tree, that Snakemake cannot
lock the directory and fails with Snakemake's own advice to ``--unlock`` (wrong while the other run is alive), after
DVC may already have recorded earlier stages in ``dvc.lock``. ``check_tree`` answers first, from what is on disk and
in the process table, so the stage refuses with a message that says what to do and nothing is recorded.

A live run: a process whose working directory is this tree and whose command line runs Snakemake (not one of this
process's own ancestors, which is how DVC's own stage command starts). Lock files without such a process are stale,
left by a killed run: ``snakemake --unlock`` clears them.
"""

from __future__ import annotations

import os
from pathlib import Path


class TreeBusy(RuntimeError):
    """Another Snakemake run holds the tree, or a killed one left its locks."""


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            break
        pid = int(fields[1])
    return pids


def snakemake_processes(root: Path) -> list[int]:
    """PIDs of Snakemake processes working in ``root`` (Linux /proc), this process's ancestors excluded."""
    root = root.resolve()
    mine, found = _ancestors(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == root and any(Path(part.decode(errors="replace")).name.startswith("snakemake") for part in cmd[:2]):
            found.append(int(entry.name))
    return sorted(found)


def check_tree(root: Path) -> None:
    """Raise :class:`TreeBusy` when ``root`` is held by a live Snakemake run or by stale locks."""
    root = Path(root)
    locks = sorted((root / ".snakemake" / "locks").glob("*.lock"))
    if not locks:
        return
    live = snakemake_processes(root)
    if live:
        raise TreeBusy(
            f"{root.resolve()}: a Snakemake run (pid {', '.join(map(str, live))}) is using this working tree; "
            "wait for it to finish or stop it (Ctrl-C), then run this again. Nothing was run and dvc.lock is "
            "unchanged."
        )
    raise TreeBusy(
        f"{root.resolve()}: Snakemake locks from a run that is no longer alive ({len(locks)} file(s) in "
        ".snakemake/locks, e.g. after a kill); clear them with `snakemake --unlock`, then run this again."
    )
