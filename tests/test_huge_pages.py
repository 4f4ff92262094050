"""train.huge_pages: the relaunch keeps the command line and other tunables, runs once, and can be turned off."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from flaxenc_train import huge_pages

# Relaunches (where it applies), then prints what the relaunched process sees.
PROGRAM = (
    "import os, sys\n"
    "from flaxenc_train.huge_pages import relaunch_with_huge_pages\n"
    "print('start', flush=True)\n"
    "relaunch_with_huge_pages()\n"
    "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n"
)


def run_program(**environ: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
    env.update(PYTHONPATH=str(REPO), **environ)
    result = subprocess.run([sys.executable, "-c", PROGRAM, "a b", "--flag"], env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    return result.stdout.splitlines()


def test_relaunch_needed_reads_the_environment():
    assert not huge_pages.relaunch_needed({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not huge_pages.relaunch_needed({huge_pages.OPT_OUT: "0"})


@pytest.mark.skipif(not huge_pages.relaunch_needed({}), reason="no glibc >= 2.35 with transparent huge pages here")
def test_relaunch_sets_the_tunable_once_and_keeps_arguments():
    # 'start' twice: the program ran again after the exec, and only once more.
    assert run_program() == ["start", "start", f"{huge_pages.TUNABLE} ['a b', '--flag']"]
    tunables = "glibc.malloc.trim_threshold=1048576"
    assert run_program(GLIBC_TUNABLES=tunables)[-1] == f"{tunables}:{huge_pages.TUNABLE} ['a b', '--flag']"


def test_opt_out_and_set_tunable_do_not_relaunch():
    assert run_program(FLAXENC_HUGE_PAGES="0") == ["start", "None ['a b', '--flag']"]
    assert run_program(GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == ["start", "glibc.malloc.hugetlb=0 ['a b', '--flag']"]
