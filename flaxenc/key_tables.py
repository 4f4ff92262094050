"""Declarative PyTorch <-> Flax parameter tables and the strict conversion that applies them.

The tables live beside what they describe: each encoder family's file (flaxenc/models/) and each
head's (flaxenc/modules/) holds its RULES, and the registries name them. A rule names a PyTorch key template and a Flax path template ("{i}" stands for a layer index)
and whether the array is transposed (torch Linear weights are [out, in], Flax kernels [in, out]).
The same rules convert in both directions, so a saved folder has the keys PyTorch expects.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
    torch: str
    flax: str
    transpose: bool = False

    def _pattern(self, template: str) -> re.Pattern:
        return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def match_torch(self, key: str) -> str | None:
        """The Flax path for a PyTorch key, or None when the rule does not apply."""
        found = self._pattern(self.torch).match(key)
        return None if found is None else self.flax.format(**found.groupdict())

    def match_flax(self, path: str) -> str | None:
        found = self._pattern(self.flax).match(path)
        return None if found is None else self.torch.format(**found.groupdict())


def linear(torch_name: str, flax_name: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{torch_name}.weight", f"{flax_name}.kernel", transpose=True)]
    return rules + [Rule(f"{torch_name}.bias", f"{flax_name}.bias")] if bias else rules


def layer_norm(torch_name: str, flax_name: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{torch_name}.weight", f"{flax_name}.scale")]
    return rules + [Rule(f"{torch_name}.bias", f"{flax_name}.bias")] if bias else rules


def embedding(torch_name: str, flax_name: str) -> list[Rule]:
    return [Rule(f"{torch_name}.weight", f"{flax_name}.embedding")]


def normalize_hf_keys(tensors: dict[str, np.ndarray], base_prefix: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Keys as a bare transformers base model has them.

    Checkpoints of task models (BertForMaskedLM, ...) prefix the encoder with `bert.`/`roberta.`
    and add heads; like transformers' AutoModel, keep the encoder and report the heads as dropped.
    Old TensorFlow conversions name LayerNorm parameters gamma/beta.
    """
    prefix = base_prefix + "."
    dropped: list[str] = []
    if any(key.startswith(prefix) for key in tensors):
        dropped = sorted(key for key in tensors if not key.startswith(prefix))
        tensors = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    renamed = {}
    for key, value in tensors.items():
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        renamed[key] = value
    return renamed, dropped


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def torch_to_flax(
    rules: Iterable[Rule],
    tensors: dict[str, np.ndarray],
    targets: dict[str, tuple[int, ...]],
    source: str,
    ignore: re.Pattern | None = None,
) -> dict[str, np.ndarray]:
    """Fills every Flax path in `targets` (path -> shape) from PyTorch `tensors`.

    Every source key must be used (or match `ignore`) and every target filled with the right
    shape; otherwise one ValueError lists all mismatches, naming `source`.
    """
    rules = tuple(rules)
    filled: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for key in sorted(tensors):
        value = tensors[key]
        if ignore is not None and ignore.match(key):
            continue
        match = next(((rule, path) for rule in rules if (path := rule.match_torch(key)) is not None), None)
        if match is None or match[1] not in targets:
            problems.append(f"unexpected key {key} {_shape(value.shape)}")
            continue
        rule, path = match
        array = value.T if rule.transpose else value
        expected = tuple(targets[path])
        if array.shape != expected:
            torch_shape = expected[::-1] if rule.transpose else expected
            problems.append(f"wrong shape for {key}: {_shape(value.shape)}, expected {_shape(torch_shape)}")
            continue
        filled[path] = np.asarray(array, dtype=np.float32)
    for path, shape in targets.items():
        if path not in filled and not any(p.startswith(f"wrong shape for {_torch_key(rules, path)}:") for p in problems):
            rule = _rule_for_flax(rules, path)
            torch_shape = tuple(shape)[::-1] if rule and rule.transpose else shape
            problems.append(f"missing key {_torch_key(rules, path)} {_shape(torch_shape)}")
    if problems:
        listing = "\n  ".join(problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        raise ValueError(f"{source}: the weights do not fit the model ({count}):\n  {listing}")
    return filled


def _rule_for_flax(rules: tuple[Rule, ...], path: str) -> Rule | None:
    return next((rule for rule in rules if rule.match_flax(path) is not None), None)


def _torch_key(rules: tuple[Rule, ...], path: str) -> str:
    rule = _rule_for_flax(rules, path)
    return path if rule is None else rule.match_flax(path)


def flax_to_torch(rules: Iterable[Rule], params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch state dict for Flax `params` (path -> array); the inverse of torch_to_flax."""
    rules = tuple(rules)
    tensors = {}
    for path, value in params.items():
        rule = _rule_for_flax(rules, path)
        if rule is None:
            raise ValueError(f"no PyTorch key is known for the Flax parameter {path}")
        value = np.asarray(value, dtype=np.float32)
        tensors[rule.match_flax(path)] = value.T if rule.transpose else value
    return tensors
