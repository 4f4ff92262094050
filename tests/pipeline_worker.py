"""One process of a 2-process run on fake CPU devices; driven by test_pipeline.py.

    python pipeline_worker.py pipeline OUT.npz STEPS PROCESS_ID NUM_PROCESSES PORT CONFIG.yaml [key=value ...]
    python pipeline_worker.py train OUT.json - PROCESS_ID NUM_PROCESSES PORT CONFIG.yaml [key=value ...]

pipeline: builds the run's input pipeline and writes, per step, the dataset chosen and this
process's rows (token ids), and the records this process read from each file.
train: runs flaxenc-train's `train()` (a SIGKILL from the test may end it early).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np


def main(mode: str, out: str, steps: str, process_id: str, processes: str, port: str, config_path: str, *overrides: str):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", int(processes), int(process_id))
    jax.config.update("jax_default_matmul_precision", "float32")
    from flaxenc_train.config import load_config

    config = load_config(config_path, list(overrides))
    if mode == "train":
        from flaxenc_train.loop import Run, train

        if os.environ.get("FLAXENC_TEST_LATE_PROCESS") == process_id:  # a slow host, to test the start's ordering
            start = Run.train
            Run.train = lambda self: (time.sleep(3), start(self))[1]

        summary = train(config, progress=False)
        if jax.process_index() == 0:
            with open(out, "w") as f:
                json.dump({"steps": summary.steps, "resumed_from": summary.resumed_from}, f)
        return

    from flaxenc_train import sources
    from flaxenc_train.inputs import StreamInput
    from flaxenc_train.loop import build_loss
    from flaxenc_train.model import build_encoder

    encoder = build_encoder(config.model, config.seed)
    loss = build_loss(config.loss)
    stream = StreamInput(config, encoder, [loss], [0, 0, 0], True, jax.device_count())
    datasets, rows = [], []
    for _ in range(int(steps)):
        dataset, batch, _ = next(stream.iterator)
        datasets.append(dataset)
        ids = [column["input_ids"] * column["attention_mask"] for column in batch["columns"]]
        rows.append(np.stack(ids, axis=1))  # [b, columns, T]
    stream.close()
    length = max(r.shape[-1] for r in rows)
    rows = np.stack([np.pad(r, ((0, 0), (0, 0), (0, length - r.shape[-1]))) for r in rows])
    read = {path: count for path, count in sources.RECORDS_READ.items()}
    np.savez(out, datasets=np.asarray(datasets), rows=rows, read=json.dumps(read), files=json.dumps(stream.files))


if __name__ == "__main__":
    main(*sys.argv[1:])
