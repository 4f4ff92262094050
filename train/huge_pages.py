"""Transparent huge pages for the host memory XLA allocates, by relaunching the program once.

XLA's CPU runtime mallocs a step's temporaries afresh on every step. glibc serves large blocks
with fresh mmaps, so the kernel faults in and zeroes every 4 KiB page of them, every step (README
"Training program" has the measured cost). With `glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc
asks for transparent huge pages, and far fewer faults. glibc reads the setting only at process start, so `flaxenc-train` and
`python -m bench` re-execute themselves once with it set, before jax loads; programs of your own
can call relaunch_with_huge_pages() first thing. FLAXENC_HUGE_PAGES=0 turns it off.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "FLAXENC_HUGE_PAGES"
_THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _glibc_supports_tunable() -> bool:
    library, version = platform.libc_ver()
    try:
        return library == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


def _kernel_allows_huge_pages() -> bool:
    try:
        return "[never]" not in _THP_ENABLED.read_text()
    except OSError:
        return False


def relaunch_needed(environ: dict[str, str] | None = None) -> bool:
    """Whether this process runs without glibc's huge-page tunable where it would apply."""
    environ = os.environ if environ is None else environ
    return (
        sys.platform == "linux"
        and environ.get(OPT_OUT, "1") != "0"
        and "glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", "")
        and _glibc_supports_tunable()
        and _kernel_allows_huge_pages()
    )


def relaunch_with_huge_pages() -> None:
    """Re-executes this Python program (same interpreter, same command line) with the tunable set;
    returns without doing anything where it does not apply or is already set."""
    if not relaunch_needed():
        return
    tunables = os.environ.get("GLIBC_TUNABLES")
    environ = {**os.environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
