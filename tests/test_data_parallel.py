"""Data parallelism: the same 20 steps on 1 device, 8 fake CPU devices and 2 processes x 4 devices.

jax fakes CPU devices only when XLA_FLAGS is set before it starts, so each run is a subprocess
(tests/dp_worker.py). Dropout is on: its keys depend on the step, not on the device layout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, build_st_model, data_folder

WORKER = Path(__file__).with_name("dp_worker.py")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, bert_tokenizer_path):
    folder, _ = build_st_model(
        tmp_path_factory.mktemp("dp_model"), bert_tokenizer_path, heads=(("dense", 8, torch.nn.Tanh(), True),)
    )
    return folder


@pytest.fixture(scope="module")
def single_device_cosine(tmp_path_factory, model_folder):
    """The reference: CosineSimilarityLoss on one device."""
    return run_workers(model_folder, tmp_path_factory.mktemp("single") / "one.npz", "cosine", "1", fake_devices=8)


def run_workers(folder, out, loss, devices, fake_devices, processes=1):
    if data_folder() is None:
        pytest.skip("STS-B data not found: set FLAXENC_DATA or place it at ../shared/data")
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={fake_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["FLAXENC_DATA"] = str(data_folder())
    command = [sys.executable, str(WORKER), str(folder), str(out), loss, devices]
    if processes == 1:
        workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        workers = [
            subprocess.Popen(
                command + [str(i), str(processes), str(port)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(processes)
        ]
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-4000:]
    return dict(np.load(out))


def assert_same_training(single, parallel, what):
    loss_diff = float(np.abs(single["losses"] - parallel["losses"]).max() / np.abs(single["losses"]).max())
    params = [k for k in single if k not in ("losses", "devices", "compiles", "sharded")]
    param_diff = max(float(np.abs(single[k] - parallel[k]).max()) for k in params)
    print(f"{what}: loss max relative diff {loss_diff:.2e}, parameter max abs diff {param_diff:.2e}")
    assert loss_diff <= 1e-5
    assert param_diff <= 1e-5


@pytest.mark.parametrize("loss", ["cosine", "mnrl"])
def test_eight_devices_train_like_one(tmp_path, model_folder, single_device_cosine, loss):
    """20 steps on 8 devices equal 20 steps on 1; for MNRL the loss is the global-batch loss."""
    if loss == "cosine":
        single = single_device_cosine
    else:
        single = run_workers(model_folder, tmp_path / "one.npz", loss, "1", fake_devices=8)
    eight = run_workers(model_folder, tmp_path / "eight.npz", loss, "8", fake_devices=8)
    assert int(single["devices"]) == 1 and int(eight["devices"]) == 8
    assert int(eight["compiles"]) == 1  # one batch shape, one program
    assert_same_training(single, eight, f"{loss}: 8 devices vs 1")


def test_fsdp_trains_like_replicated(tmp_path, model_folder, single_device_cosine):
    """fsdp=True shards the large parameters and their Adam moments over 8 devices; same result."""
    single = single_device_cosine
    fsdp = run_workers(model_folder, tmp_path / "fsdp.npz", "cosine", "8fsdp", fake_devices=8)
    assert int(single["sharded"]) == 0
    assert int(fsdp["sharded"]) > 0
    assert_same_training(single, fsdp, "FSDP on 8 devices vs 1 device")


def test_two_processes_train_like_one(tmp_path, model_folder, single_device_cosine):
    """jax.distributed with two local CPU processes of 4 devices each, each feeding half the batch."""
    single = single_device_cosine
    pair = run_workers(model_folder, tmp_path / "pair.npz", "cosine", "all", fake_devices=4, processes=2)
    assert int(pair["devices"]) == 8
    assert_same_training(single, pair, "2 processes x 4 devices vs 1 device")
