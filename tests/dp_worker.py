"""Runs N training steps of flaxenc on a mesh and writes the result; driven by test_data_parallel.py.

    python dp_worker.py MODEL_FOLDER OUT.npz LOSS DEVICES [PROCESS_ID NUM_PROCESSES PORT]

LOSS is "cosine" (STS-B pairs with scores) or "mnrl" (anchor/positive pairs). DEVICES is how many
of this process's devices the mesh uses ("all" for every device of every process; a trailing
"fsdp", as in "8fsdp", shards parameters and optimizer state instead of replicating them). With a process
id, the script joins a jax.distributed CPU cluster and feeds only its own rows of each batch.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

STEPS, BATCH, LENGTH = 20, 16, 32


def main(folder: str, out: str, loss_name: str, devices: str, process_id=None, num_processes=None, port=None):
    if process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))
    jax.config.update("jax_default_matmul_precision", "float32")

    from conftest import read_stsb
    from jax.sharding import Mesh

    import flaxenc
    from flaxenc import losses, optim
    from flaxenc.sentence_model import flat_params
    from flaxenc.sharding import DATA_AXIS
    from flaxenc.train_step import TrainStep, init_train_state, params_to_model

    encoder = flaxenc.SentenceEncoder.from_pretrained(folder, devices=jax.local_devices()[:1])
    first, second, scores = read_stsb("train")

    def column(texts):
        ids = np.zeros((len(texts), LENGTH), np.int32)
        for row, tokens in enumerate(encoder.tokenize(texts)):
            ids[row, : len(tokens)] = tokens[:LENGTH]
        return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32)}

    batches = []
    for step in range(STEPS):
        rows = slice(step * BATCH, (step + 1) * BATCH)
        batch = {"columns": [column(first[rows]), column(second[rows])]}
        if loss_name == "cosine":
            batch["labels"] = np.asarray(scores[rows], np.float32) / 5.0
        batches.append(batch)

    fsdp = devices.endswith("fsdp")
    devices = devices.removesuffix("fsdp")
    if devices == "all":
        mesh = Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
    else:
        mesh = Mesh(np.asarray(jax.devices()[: int(devices)]), (DATA_AXIS,))
    loss = losses.CosineSimilarityLoss() if loss_name == "cosine" else losses.MultipleNegativesRankingLoss()
    schedule = optim.learning_rate_schedule("warmuplinear", 1e-4, 5, STEPS)
    tx = optim.adamw(schedule, weight_decay=0.01, max_grad_norm=1.0)
    graphdef, state = init_train_state(encoder.model, tx, seed=1)
    train_step = TrainStep(graphdef, loss, tx, mesh=mesh, learning_rate_fn=schedule, dropout=True, fsdp=fsdp)
    state = train_step.place_state(state)
    sharded = sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state))

    history = []
    for batch in batches:
        if process_id is not None:  # each process feeds its own slice of the global batch
            share = BATCH // int(num_processes)
            mine = slice(int(process_id) * share, (int(process_id) + 1) * share)
            batch = jax.tree.map(lambda x, mine=mine: x[mine], batch)
        state, metrics = train_step(state, batch)
        history.append(float(metrics["loss"]))
    params = flat_params(params_to_model(graphdef, state))
    if jax.process_index() == 0:
        np.savez(out, losses=np.array(history), devices=mesh.size, compiles=train_step.num_compiles, sharded=sharded, **params)


if __name__ == "__main__":
    main(*sys.argv[1:])
