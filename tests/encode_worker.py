"""One process of a flaxenc-encode run on fake CPU devices; driven by test_encode_command.py.

    python encode_worker.py PROCESS_ID NUM_PROCESSES PORT PAUSE_S [flaxenc-encode arguments ...]

With NUM_PROCESSES > 1 the processes join through jax.distributed on 127.0.0.1:PORT (gloo), as
hosts of a pod would. PAUSE_S > 0 sleeps after each shard is written, so that a test can kill
the run between shards. Exits with flaxenc-encode's status.
"""

from __future__ import annotations

import sys
import time


def main(process_id: str, processes: str, port: str, pause: str, *argv: str) -> int:
    import jax

    if int(processes) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", int(processes), int(process_id))
    jax.config.update("jax_default_matmul_precision", "float32")
    from flaxenc_train import encode

    if float(pause) > 0:
        write = encode.write_shard
        encode.write_shard = lambda *args: (write(*args), time.sleep(float(pause)))[0]
    return encode.main(list(argv))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
