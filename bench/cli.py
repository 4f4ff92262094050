"""`python -m bench`: flaxenc against PyTorch sentence-transformers, in one process, on the same device.

    python -m bench [--quick | --full] [--only host|encode|train|search] [--json PATH] [overrides ...]

Prints the report and writes every figure to JSON (default bench/results/<host>-<date>.json), rewritten
after each setting, so that a run stopped midway keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# JAX would take 75% of a GPU's memory up front; torch shares the device here.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flaxenc  # noqa: E402
from bench import environment  # noqa: E402
from bench import settings as presets
from bench.data import mrpc_train_pairs, stsb_sentences, stsb_train_pairs  # noqa: E402
from bench.encoding import measure_encode  # noqa: E402
from bench.host import measure_first_call, measure_host_encode  # noqa: E402
from bench.models import MODEL_NAMES, RECIPE2_SIZES, ModelFolders  # noqa: E402
from bench.report import report  # noqa: E402
from bench.search import measure_search  # noqa: E402
from bench.settings import Settings  # noqa: E402
from bench.training import CONTRASTIVE, COSINE, measure_train, random_batches, stsb_batches  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MFU_LENGTH = 128


def _guarded(label: str, measure, *args, **kwargs) -> dict:
    """The measurement's figures, or its error: one failing setting (out of memory, say) does not end the run."""
    print(f"{label} ...", end=" ", flush=True)
    start = environment.cpu_snapshot()
    try:
        figures = measure(*args, **kwargs)
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        print(f"{label}: failed", flush=True)
        return {"label": label, "error": f"{type(error).__name__}: {error}"}
    finally:
        environment.release_device_memory()
    figures["others_cpu_share"] = environment.others_cpu_share(start, environment.cpu_snapshot())
    print(f"flaxenc {figures['flaxenc']['per_s']:,.1f}/s, ST {figures['st']['per_s']:,.1f}/s, "
          f"ratio {figures['ratio']:.2f}", flush=True)
    return {"label": label, **figures}


def run_host(settings: Settings, folders: ModelFolders) -> dict:
    """encode()'s host side alone against the tokenizer, and the first call of a second process."""
    model = settings.models[0] if settings.models else MODEL_NAMES[0]
    folder, sentences = folders.get(model), stsb_sentences(settings.host_sentences)
    cells = []
    for batch_size in settings.host_batch_sizes:
        label = f"host-only encode {model} batch {batch_size}"
        print(f"{label} ...", end=" ", flush=True)
        try:
            cell = measure_host_encode(folder, sentences, batch_size, settings.repeats)
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            cells.append({"label": label, "error": f"{type(error).__name__}: {error}"})
            continue
        print(f"{cell['host']['per_s']:,.0f}/s, tokenizer {cell['tokenizer']['per_s']:,.0f}/s, ratio {cell['ratio']:.2f}",
              flush=True)
        cells.append({"label": label, "model": model, "batch_size": batch_size, **cell})
    result = {"cells": cells}
    if settings.first_call_sentences:
        print("first encode() call of a second process (warm compile cache) vs ST's ...", end=" ", flush=True)
        try:
            first = measure_first_call(folder, stsb_sentences(settings.first_call_sentences), 32)
            result["first_call"] = {"model": model, **first}
            print(f"{first['flaxenc_warm_cache']['first_call_s']:.2f} s vs {first['st']['first_call_s']:.2f} s", flush=True)
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            result["first_call"] = {"error": f"{type(error).__name__}: {error}"}
    return result


def run_encode(settings: Settings, folders: ModelFolders) -> Iterator[dict]:
    for model in settings.models:
        sentences = stsb_sentences(settings.sentences_for(model))
        for dtype in settings.encode_dtypes_for(model):
            for batch_size in settings.encode_batch_sizes:
                label = f"encode {model} {dtype} batch {batch_size}"
                figures = _guarded(label, measure_encode, folders.get(model), sentences, dtype, batch_size, settings.repeats)
                yield {"model": model, "dtype": dtype, "batch_size": batch_size, **figures}


def run_train(settings: Settings, folders: ModelFolders) -> Iterator[dict]:
    pairs = stsb_train_pairs()
    for model in settings.models:
        folder = folders.get(model)
        tokenize = flaxenc.SentenceEncoder.from_pretrained(folder).tokenize
        for batch_size in settings.train_batch_sizes_for(model):
            batches = stsb_batches(tokenize, pairs, batch_size, settings.train_steps)
            for dtype in settings.train_dtypes:
                label = f"train {model} {COSINE.name} {dtype} batch {batch_size}"
                figures = _guarded(label, measure_train, folder, COSINE, dtype, batches, settings.repeats)
                yield {"model": model, "objective": COSINE.name, "tokens": "STS-B", "dtype": dtype, **figures}

    if settings.recipe2_size:
        model = f"recipe2-roberta-{settings.recipe2_size}"
        folder = folders.get(model, RECIPE2_SIZES[settings.recipe2_size])
        for length in settings.recipe2_lengths:
            batches = random_batches(length, settings.recipe2_batch_size, settings.train_steps)
            for dtype in settings.train_dtypes:
                label = f"train {model} {CONTRASTIVE.name} {dtype} {length} tokens batch {settings.recipe2_batch_size}"
                figures = _guarded(label, measure_train, folder, CONTRASTIVE, dtype, batches, settings.repeats,
                                   fixed_length=length, peak_flops=environment.peak_bf16_flops())
                yield {"model": model, "objective": CONTRASTIVE.name, "tokens": f"{length} fixed", "dtype": dtype, **figures}
        # The recipe on its own data: MRPC pairs (sentences of ~10-60 tokens), max_seq_length 1280.
        tokenize = flaxenc.SentenceEncoder.from_pretrained(folder).tokenize
        batch_size = settings.recipe2_mrpc_batch_size
        batches = stsb_batches(tokenize, mrpc_train_pairs(), batch_size, settings.train_steps)
        for dtype in settings.train_dtypes:
            label = f"train {model} {CONTRASTIVE.name} {dtype} MRPC batch {batch_size}"
            figures = _guarded(label, measure_train, folder, CONTRASTIVE, dtype, batches, settings.repeats)
            yield {"model": model, "objective": CONTRASTIVE.name, "tokens": "MRPC", "dtype": dtype, **figures}


def run_mfu(settings: Settings, folders: ModelFolders) -> dict:
    """bf16 training at 128 tokens a row; MFU where the device's peak is known."""
    peak = environment.peak_bf16_flops()
    model = settings.mfu_model or ("bert-base" if environment.on_gpu() else None)
    if model is None:
        return {"status": "n/a (no GPU)"}
    batches = random_batches(MFU_LENGTH, settings.mfu_batch_size, settings.train_steps)
    label = f"MFU {model} {COSINE.name} bfloat16 {MFU_LENGTH} tokens batch {settings.mfu_batch_size}"
    figures = _guarded(label, measure_train, folders.get(model), COSINE, "bfloat16", batches, settings.repeats,
                       fixed_length=MFU_LENGTH, xla_flops=True, peak_flops=peak)
    return {"model": model, "peak_flops": peak, **figures}


def run(settings: Settings, command: list[str], save: Callable[[dict], None] = lambda results: None) -> dict:
    """The figures of settings' sections; `save(results)` after each section and each encode or train
    setting, so that a run stopped midway (a time-boxed GPU lease) keeps what it measured."""
    now = datetime.datetime.now()
    results = {
        "host": platform.node(),
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *command]),
        "settings": dataclasses.asdict(settings),
        "hardware": environment.hardware(),
        "versions": environment.versions(),
        "precision": environment.precision_notes(),
    }
    start = environment.cpu_snapshot()
    with tempfile.TemporaryDirectory(prefix="flaxenc-bench-") as root:
        folders = ModelFolders(Path(root))
        if "host" in settings.sections:
            results["host_side"] = run_host(settings, folders)
            save(results)
        for section, cells in (("encode", run_encode), ("train", run_train)):
            if section in settings.sections:
                results[section] = []
                for cell in cells(settings, folders):
                    results[section].append(cell)
                    save(results)
        if "train" in settings.sections:
            results["mfu"] = run_mfu(settings, folders)
    if "search" in settings.sections:
        label = f"semantic_search {settings.search_queries} queries over {settings.search_corpus} x {settings.search_dim}"
        results["search"] = [
            _guarded(label, measure_search, settings.search_queries, settings.search_corpus, settings.search_dim,
                     settings.search_top_k, settings.repeats)
        ]  # fmt: skip
    results["others_cpu_share"] = environment.others_cpu_share(start, environment.cpu_snapshot())
    return results


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(value) for value in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); '' -> () (e.g. --models '' for recipe 2 alone)."""
    return tuple(name for name in text.split(",") if name)


def _per_model(values: list[str], parse, current: dict) -> dict:
    """`VALUE` sets every model, `MODEL=VALUE` one model; later ones win."""
    merged = dict(current)
    for value in values:
        model, _, text = value.rpartition("=")
        for name in [model] if model else [*MODEL_NAMES, *merged]:
            merged[name] = parse(text)
    return merged


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a minute or two: MiniLM, a few hundred sentences")
    preset.add_argument("--full", action="store_true", help="the whole matrix (for a GPU)")
    parser.add_argument("--only", choices=("host", "encode", "train", "search"), help="run one section")
    parser.add_argument("--json", type=Path, help="where to write the figures (default bench/results/<host>-<date>.json)")
    parser.add_argument("--models", type=_names, help=f"comma-separated, of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--sentences", action="append", default=[], metavar="[MODEL=]N",
                        help="STS-B sentences to encode (0: all), for every model or one; repeatable")
    parser.add_argument("--dtypes", action="append", default=[], metavar="[MODEL=]D,D",
                        help="encode dtypes (float32,bfloat16), for every model or one; repeatable")
    parser.add_argument("--batch-sizes", type=_ints, help="encode batch sizes, e.g. 32,128,512")
    parser.add_argument("--host-sentences", type=int, help="sentences of the host-only encode (0: all STS-B)")
    parser.add_argument("--host-batch-sizes", type=_ints, help="batch sizes of the host-only encode")
    parser.add_argument("--first-call-sentences", type=int, help="sentences of the first-call comparison (0: skip it)")
    parser.add_argument("--train-dtypes", type=_names, help="training dtypes: float32,bfloat16")
    parser.add_argument("--train-batch-sizes", action="append", default=[], metavar="[MODEL=]B,B",
                        help="pairs per training step, for every model or one; repeatable")
    parser.add_argument("--steps", type=int, help="timed training steps per pass")
    parser.add_argument("--repeats", type=int, help="timed passes per setting (the fastest counts)")
    parser.add_argument("--recipe2-size", choices=(*RECIPE2_SIZES, "none"), help="recipe 2's RoBERTa size, or none")
    parser.add_argument("--recipe2-lengths", type=_ints, help="recipe 2's sequence lengths, e.g. 512,1280")
    parser.add_argument("--recipe2-batch-size", type=int, help="recipe 2's pairs per step")
    parser.add_argument("--recipe2-mrpc-batch-size", type=int, help="recipe 2's pairs per step on MRPC")
    parser.add_argument("--mfu", metavar="MODEL", help="measure MFU with MODEL even without a GPU (default: bert-base on GPU)")
    parser.add_argument("--mfu-batch-size", type=int, help="pairs per step of the MFU measurement")
    parser.add_argument("--search-queries", type=int, help="queries of the search section (default 1000)")
    parser.add_argument("--search-corpus", type=int, help="corpus embeddings of the search section (default 100000)")
    args = parser.parse_args(argv)

    settings = presets.quick() if args.quick else presets.full() if args.full else Settings()
    overrides = {
        "sections": (args.only,) if args.only else None,
        "models": args.models,
        "encode_batch_sizes": args.batch_sizes,
        "host_batch_sizes": args.host_batch_sizes,
        "first_call_sentences": args.first_call_sentences,
        "train_dtypes": args.train_dtypes,
        "train_steps": args.steps,
        "repeats": args.repeats,
        "recipe2_lengths": args.recipe2_lengths,
        "recipe2_batch_size": args.recipe2_batch_size,
        "recipe2_mrpc_batch_size": args.recipe2_mrpc_batch_size,
        "mfu_model": args.mfu,
        "mfu_batch_size": args.mfu_batch_size,
        "search_queries": args.search_queries,
        "search_corpus": args.search_corpus,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(settings, name, value)
    if args.host_sentences is not None:
        settings.host_sentences = args.host_sentences or None
    if args.recipe2_size:
        settings.recipe2_size = None if args.recipe2_size == "none" else args.recipe2_size
    settings.encode_sentences = _per_model(args.sentences, lambda t: int(t) or None, settings.encode_sentences)
    settings.encode_dtypes = _per_model(args.dtypes, _names, settings.encode_dtypes)
    settings.train_batch_sizes = _per_model(args.train_batch_sizes, _ints, settings.train_batch_sizes)
    unknown = set(settings.models) - set(MODEL_NAMES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; use {', '.join(MODEL_NAMES)}")
    return settings, args.json


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings, json_path = parse_args(argv)
    if json_path is None:
        json_path = RESULTS / f"{platform.node()}-{datetime.datetime.now().isoformat(timespec='minutes').replace(':', '')}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)

    def save(results: dict) -> None:
        json_path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")

    results = run(settings, argv, save)
    save(results)
    print()
    print(report(results))
    print(f"\nfigures written to {json_path}")
    host = results.get("host_side", {})
    cells = results.get("encode", []) + results.get("train", []) + host.get("cells", []) + results.get("search", [])
    failed = [c["label"] for c in cells if "error" in c]
    return 1 if failed or "error" in results.get("mfu", {}) or "error" in host.get("first_call", {}) else 0
