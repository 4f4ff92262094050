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

    def percent(side):
        return "n/a" if mfu[side]["mfu"] is None else f"{100 * mfu[side]['mfu']:.1f}%"

    flops = f"{mfu['flops_per_step'] / 1e12:.3g} TFLOP/step ({mfu['flops_method']}; XLA cost analysis counts "
    flops += f"{mfu['xla_flops_per_step'] / 1e12:.3g})"
    return "\n".join([
        f"MFU, {mfu['label']}: {flops}; peak {mfu['peak_flops'] / 1e12 if mfu['peak_flops'] else 'n/a'} TFLOP/s",
        f"  flaxenc {mfu['flaxenc']['tflops_per_s']:.3g} TFLOP/s = {percent('flaxenc')} MFU; "
        f"ST {mfu['st']['tflops_per_s']:.3g} TFLOP/s = {percent('st')} MFU",
    ])


def _load_line(results: dict) -> str:
    share = results["others_cpu_share"]
    if share is None:
        return "other processes' CPU use: unknown"
    line = f"other processes kept {100 * share:.0f}% of the CPU cores busy during the run"
    return line + ("; WARNING: the figures are unreliable (torch suffers most)" if share > 0.05 else "")


def report(results: dict) -> str:
    hw, versions = results["hardware"], results["versions"]
    lines = [
        f"flaxenc vs PyTorch sentence-transformers (ST), one process, {results['date']} on {results['host']}",
        f"hardware: {hw['cpu']}, {hw['cpu_cores_usable']} of {hw['cpu_cores']} cores usable; "
        f"jax devices {', '.join(hw['jax_devices'])}; torch on {hw['torch_device']}, {hw['torch_threads']} threads",
        "versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        *(f"{dtype}: {note}" for dtype, note in results["precision"].items()),
        _load_line(results),
        "Ratios are flaxenc / ST (above 1: flaxenc is faster). Steady state: the fastest timed pass. "
        "1st call / 1st step: the warm-up, where flaxenc compiles (XLA, once per shape).",
    ]
    if "encode" in results:
        lines += ["", "Encode, sentences/s (STS-B sentences, sorted and batched by each library)", encode_table(results["encode"])]
    if "train" in results:
        lines += ["", "Training, pairs/s (steady state over the timed steps)", train_table(results["train"]),
                  "", mfu_lines(results["mfu"])]
    return "\n".join(lines)
