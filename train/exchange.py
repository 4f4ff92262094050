"""Small per-step agreements between the processes of a run, through jax.distributed's key-value store.

Each process reads only its own records, yet the global batch must have one shape (the longest
row's bucket, the packed row count) and, for in-batch negatives, no text twice. The input
pipeline settles these on the host, a step ahead of the device, with a few bytes per process:
`gather` (every process's value) and `chain` (process p waits for what processes < p took).
The store is the coordinator's (the one `jax.distributed.initialize()` started), not a device
collective, so the pipeline's thread never competes with the train step for the devices.
"""

from __future__ import annotations

import json
from typing import Any

_TIMEOUT_MS = 30 * 60 * 1000  # a slow shard (a cold disk, a big gzip to skip through on resume)


def _client():
    # jax has no public handle on the coordinator's key-value store; MaxText and orbax use this one.
    from jax._src.distributed import global_state

    return global_state.client


class HostExchange:
    """Agreement between `process_count` processes; a no-op for one process."""

    def __init__(self, process_index: int, process_count: int, namespace: str = "flaxenc-data"):
        self.index, self.count, self.namespace = process_index, process_count, namespace
        self._client = _client() if process_count > 1 else None
        if process_count > 1 and self._client is None:
            raise RuntimeError("several processes but no jax.distributed client: call jax.distributed.initialize() first")
        self._written: list[tuple[int, str]] = []

    def _key(self, step: int, tag: str, process: int) -> str:
        return f"{self.namespace}/{tag}/{step}/{process}"

    def _set(self, step: int, tag: str, value: Any) -> None:
        key = self._key(step, tag, self.index)
        self._client.key_value_set(key, json.dumps(value))
        self._written.append((step, key))
        # Keys of step s - 2 are no longer read by anyone: every process has published step s - 1,
        # which it does only after reading step s - 2.
        while self._written and self._written[0][0] < step - 1:
            self._client.key_value_delete(self._written.pop(0)[1])

    def _get(self, step: int, tag: str, process: int) -> Any:
        return json.loads(self._client.blocking_key_value_get(self._key(step, tag, process), _TIMEOUT_MS))

    def gather(self, step: int, tag: str, value: Any) -> list[Any]:
        """Every process's `value` for this step, in process order."""
        if self.count == 1:
            return [value]
        self._set(step, tag, value)
        return [value if p == self.index else self._get(step, tag, p) for p in range(self.count)]

    def chain_wait(self, step: int, tag: str) -> Any:
        """What the previous process passed on (None for process 0)."""
        if self.count == 1 or self.index == 0:
            return None
        return self._get(step, tag, self.index - 1)

    @property
    def passes_on(self) -> bool:
        """Whether a process follows this one in the chain."""
        return self.index < self.count - 1

    def chain_pass(self, step: int, tag: str, value: Any) -> None:
        """Passes `value` to the next process (the last process passes nothing)."""
        if self.passes_on:
            self._set(step, tag, value)
