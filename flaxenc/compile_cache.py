"""JAX's persistent compilation cache, on by default for flaxenc's programs.

XLA compiles every program (an encode batch shape, a training step) the first time a process runs
it. With the cache, a later process loads the compiled program from disk instead, so a second
`encode()` or a resumed run starts without the wait. `enable()` is called when a SentenceEncoder
or a TrainStep is made; it changes nothing when the cache is off or jax already has a cache folder.

FLAXENC_COMPILE_CACHE: unset for the default folder ($XDG_CACHE_HOME or ~/.cache, then
flaxenc/jax), a path for another folder, or 0 / off to leave the cache off. A cache folder set in
jax (`jax_compilation_cache_dir`) wins. Where flaxenc turns the cache on it caches every program
however fast it compiled, unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENVIRONMENT_VARIABLE = "FLAXENC_COMPILE_CACHE"
_OFF = ("0", "off", "false", "no")


def default_folder() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "flaxenc" / "jax"


def enable(folder: str | os.PathLike | None = None) -> Path | None:
    """Turns the cache on in `folder` (else FLAXENC_COMPILE_CACHE's, else default_folder()).

    Returns the folder in use, or None when the cache is off. A folder jax already has (set by
    the user, or by an earlier call) is kept.
    """
    setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if folder is None and setting.lower() in _OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    path = Path(folder or setting or default_folder()).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home, say: compile as without a cache
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # jax caches only programs that took a second to compile; a batch shape of a small model
        # compiles faster than that on a CPU, and a process compiles a dozen of them
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


__all__ = ["ENVIRONMENT_VARIABLE", "default_folder", "enable"]
