"""flaxenc's programs, installed as `flaxenc_train`: `flaxenc-train` (cli.py), `flaxenc-encode` (encode.py),
and the Python trainer: `from flaxenc_train import Trainer, TrainingArguments`."""


def __getattr__(name: str):
    # Lazily: `import flaxenc_train.config` must not load the whole training loop.
    if name in ("Trainer", "TrainingArguments"):
        from flaxenc_train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'flaxenc_train' has no attribute {name!r}")
