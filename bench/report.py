"""The printed report: hardware and versions, then one table per section, ratios beside absolute figures."""

from __future__ import annotations


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(text.rjust(width) for text, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _share(cell: dict) -> str:
    share = cell["others_cpu_share"]
    return "-" if share is None else f"{100 * share:.0f}%"


def _errors(cells: list[dict]) -> list[str]:
    return [f"  {cell['label']}: {cell['error']}" for cell in cells if "error" in cell]


def encode_table(cells: list[dict]) -> str:
    headers = ["model", "dtype", "batch", "sentences", "flaxenc/s", "ST/s", "flaxenc/ST",
               "flaxenc 1st call s", "flaxenc steady s", "ST 1st call s", "ST steady s", "compiles", "max |diff|", "others' CPU"]
    rows = [
        [c["model"], c["dtype"], c["batch_size"], c["sentences"], c["flaxenc"]["per_s"], c["st"]["per_s"], c["ratio"],
         c["flaxenc"]["first_call_s"], c["flaxenc"]["steady_s"], c["st"]["first_call_s"], c["st"]["steady_s"],
         c["flaxenc"]["compiles"], f"{c['max_abs_diff']:.1e}", _share(c)]
        for c in cells if "error" not in c
    ]
    return "\n".join([table(headers, rows), *_errors(cells)])


def host_lines(host: dict) -> str:
    headers = ["model", "batch", "sentences", "host-only encode/s", "tokenizer/s", "host/tokenizer", "cores"]
    rows = [[c["model"], c["batch_size"], c["sentences"], c["host"]["per_s"], c["tokenizer"]["per_s"], c["ratio"], c["cores"]]
            for c in host["cells"] if "error" not in c]
    lines = [table(headers, rows), *_errors(host["cells"])]
    first = host.get("first_call")
    if first and "error" in first:
        lines.append(f"  first call: {first['error']}")
    elif first:
        lines.append(
            f"First encode() call in a fresh process, {first['sentences']} sentences, batch {first['batch_size']}: "
            f"flaxenc {first['flaxenc_cold']['first_call_s']:.2f} s without a cache, "
            f"{first['flaxenc_warm_cache']['first_call_s']:.2f} s in a second process with the compile cache; "
            f"ST {first['st']['first_call_s']:.2f} s (flaxenc warm / ST {first['ratio']:.2f})"
        )
    return "\n".join(lines)


def train_table(cells: list[dict]) -> str:
    headers = ["model", "loss", "tokens", "dtype", "batch", "flaxenc pairs/s", "ST pairs/s", "flaxenc/ST",
               "flaxenc 1st step s", "flaxenc step s", "ST 1st step s", "ST step s", "padded tokens/step (flaxenc, ST)",
               "compiles", "others' CPU"]
    rows = [
        [c["model"], c["objective"], c["tokens"], c["dtype"], c["batch_size"], c["flaxenc"]["per_s"], c["st"]["per_s"],
         c["ratio"], c["flaxenc"]["first_step_s"], c["flaxenc"]["step_s"], c["st"]["first_step_s"], c["st"]["step_s"],
         f"{c['flaxenc']['padded_tokens_per_step']:,.0f}, {c['st']['padded_tokens_per_step']:,.0f}",
         c["flaxenc"]["compiles"], _share(c)]
        for c in cells if "error" not in c
    ]
    return "\n".join([table(headers, rows), *_errors(cells)])


def mfu_lines(mfu: dict) -> str:
    if "status" in mfu:
        return f"MFU: {mfu['status']}"
    if "error" in mfu:
        return f"MFU: {mfu['label']}: {mfu['error']}"

    def side(name: str, title: str) -> str:
        share = "n/a" if mfu[name]["mfu"] is None else f"{100 * mfu[name]['mfu']:.1f}%"
        return f"{title} {mfu[name]['tflops_per_s']:.3g} TFLOP/s, MFU {share}"

    peak = f"{mfu['peak_flops'] / 1e12:.0f} TFLOP/s" if mfu["peak_flops"] else "n/a"
    return "\n".join([
        f"{mfu['label']}: {mfu['flops_per_step'] / 1e12:.3g} TFLOP a step by {mfu['flops_method']} "
        f"(XLA's cost analysis of the compiled step: {mfu['xla_flops_per_step'] / 1e12:.3g}); bf16 peak {peak}",
        f"  {side('flaxenc', 'flaxenc')}; {side('st', 'ST')}",
    ])


def _warnings(results: dict) -> list[str]:
    hw, share = results["hardware"], results["others_cpu_share"]
    lines = []
    if share is not None:
        lines.append(f"other processes kept {100 * share:.0f}% of the CPU cores busy during the run")
        if share > 0.05:
            lines.append("WARNING: the machine was not idle, the figures are unreliable (torch's suffer most)")
    if (hw["jax_backend"] == "cpu") != (hw["torch_device"] == "cpu"):
        lines.append(f"WARNING: flaxenc runs on {hw['jax_backend']}, ST on {hw['torch_device']}")
    return lines


def report(results: dict) -> str:
    hw, versions = results["hardware"], results["versions"]
    lines = [
        f"flaxenc vs PyTorch sentence-transformers (ST), one process, {results['date']} on {results['host']}",
        f"hardware: {hw['cpu']}, {hw['cpu_cores_usable']} of {hw['cpu_cores']} cores usable; "
        f"jax devices {', '.join(hw['jax_devices'])}; torch on {hw['torch_device']}, {hw['torch_threads']} threads; "
        f"GLIBC_TUNABLES={hw.get('glibc_tunables')}",
        "versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        *(f"{dtype}: {note}" for dtype, note in results["precision"].items()),
        *_warnings(results),
        "Ratios are flaxenc / ST (above 1: flaxenc is faster). Steady state: the fastest timed pass. "
        "1st call / 1st step: the warm-up, where flaxenc compiles (XLA, once per shape).",
    ]
    if "host_side" in results:
        lines += ["", "Host side alone: encode() with a no-op model (tokenize, sort, pack, transfer, dispatch, gather) "
                  "against the Rust tokenizer on the same sentences", host_lines(results["host_side"])]
    if "encode" in results:
        lines += ["", "Encode, sentences/s (STS-B sentences, sorted and batched by each library)",
                  encode_table(results["encode"])]
    if "train" in results:
        lines += ["", "Training, pairs/s (steady state over the timed steps)", train_table(results["train"]),
                  "", mfu_lines(results["mfu"])]
    if "search" in results:
        from bench.search import search_lines

        lines += ["", "Semantic search on random float32 embeddings (cosine), each library's default chunks",
                  search_lines(results["search"])]
    return "\n".join(lines)
