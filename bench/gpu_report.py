"""The one table of bench/gpu_check.sh: every figure it measured, against #13's targets.

    python bench/gpu_report.py <out dir>

Reads <out dir>/throughput.jsonl (bench/throughput.py --json), precision_numerics.jsonl and t12_recipes.jsonl
(bench/recipe_sweep.py) and prints markdown: T12 throughput and MFU per mode and batch, evaluation, the
quickstart's numerics per precision, and the T12 recipes at 1200 steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NANOGPT_ADAMW_TOKENS_PER_S = 680_107  # #13: nanoGPT's model, same shape, batch, bf16, fused AdamW and compile (H100)
MFU_TARGET, NUMERICS_TOLERANCE, RECIPE_TARGET = 0.40, 0.02, 1.60


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def throughput_table(rows: list[dict]) -> list[str]:
    train = [r for r in rows if r.get("kind") == "train"]
    if not train:
        return ["(no throughput figures: no CUDA device, or the throughput runs failed)"]
    peak = next((r for r in rows if r.get("kind") == "peak"), {})
    lines = [f"T12 training on {train[0]['device']} (torch {train[0]['torch']}); measured peak: "
             f"{peak.get('low_precision', '?')} {peak.get('low_tflops', 0):.0f} TFLOP/s, fp32 {peak.get('fp32_tflops', 0):.0f}",
             "", "| optimizer | mode | batch | tokens/s | ms/step | MFU | target |", "|---|---|---|---|---|---|---|"]
    for r in train:
        if "error" in r:
            lines.append(f"| {r['optimizer']} | {r['mode']} | {r['batch_size']} | FAILED: {r['error'][:100]} | | | |")
            continue
        target = ""
        if r["batch_size"] == 32 and "graphs" in r["mode"]:
            target = f"MFU >= {MFU_TARGET:.0%}: {'met' if r['mfu'] >= MFU_TARGET else 'not met'}"
            if r["optimizer"] == "adamw":
                ratio = r["tokens_per_s"] / NANOGPT_ADAMW_TOKENS_PER_S
                target += f"; {ratio:.2f}x nanoGPT's {NANOGPT_ADAMW_TOKENS_PER_S:,} (>= 1.3x: {'met' if ratio >= 1.3 else 'not met'})"
        lines.append(f"| {r['optimizer']} | {r['mode']} | {r['batch_size']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['ms_per_step']:.2f} | {r['mfu']:.1%} | {target} |")
    for r in (r for r in rows if r.get("kind") == "eval"):
        mode = ("compile" if r["compile"] else "eager") + ("+graphs" if r["cuda_graphs"] else "")
        lines.append(f"| eval | {mode} | {r.get('batch_size', '')} | "
                     f"{'FAILED: ' + r['error'][:100] if 'error' in r else format(r['tokens_per_s'], ',.0f')} | | | |")
    return lines


def numerics_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no numerics figures)"]
    by_name = {r["name"]: r for r in rows}
    reference = by_name.get("quickstart_fp32", {}).get("test_bpc")
    lines = ["| quickstart in | val BPC | test BPC | test - fp32 | within 0.02 | steps | seconds |", "|---|---|---|---|---|---|---|"]
    for name in ("quickstart_fp32", "quickstart_tf32", "quickstart_bf16", "quickstart_fp16", "quickstart_bf16_graphs"):
        r = by_name.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name.removeprefix('quickstart_')} | FAILED: {r['error'][:100]} | | | | | |")
            continue
        diff = r["test_bpc"] - reference if reference is not None else None
        ok = "" if diff is None or name == "quickstart_fp32" else ("yes" if abs(diff) <= NUMERICS_TOLERANCE else "NO")
        skipped = f" ({r['curve'][-1].get('skipped_steps', 0):.0f} skipped)" if name.endswith("fp16") else ""
        lines.append(f"| {name.removeprefix('quickstart_')} | {r['val_bpc']:.4f} | {r['test_bpc']:.4f} | "
                     f"{'' if diff is None else format(diff, '+.4f')} | {ok} | {r['iterations']}{skipped} | "
                     f"{r['train_seconds']:.0f} |")
    return lines


def recipes_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no recipe figures)"]
    lines = ["| T12 recipe (1200 steps) | lr_max | val probe at 200 / 600 / 1200 | mean grad norm | clipped | val BPC | "
             "test BPC | <= 1.60 |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.get("test_bpc", 99)):
        if "error" in r:
            lines.append(f"| {r['name']} | FAILED: {r['error'][:120]} | | | | | | |")
            continue
        probe = {p["step"]: p["val_probe_bpc"] for p in r["curve"] if "val_probe_bpc" in p}
        mean = lambda key: [p[key] for p in r["curve"] if key in p]  # noqa: E731
        norms, clipped = mean("grad_norm"), mean("clipped_fraction")
        probes = " / ".join(format(probe[s], ".2f") if s in probe else "-" for s in (200, 600, 1200))
        lines.append(f"| {r['name']} | {r['lr_max']:.3g} | {probes} | "
                     f"{format(sum(norms) / len(norms), '.3g') if norms else '-'} | "
                     f"{format(sum(clipped) / len(clipped), '.0%') if clipped else '-'} | {r['val_bpc']:.4f} | "
                     f"{r['test_bpc']:.4f} | {'yes' if r['test_bpc'] <= RECIPE_TARGET else 'no'} |")
    return lines


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    sections = [("Throughput", throughput_table(read_jsonl(out / "throughput.jsonl"))),
                ("Numerics (the quickstart, same seed and LR, whole val/test splits)",
                 numerics_table(read_jsonl(out / "precision_numerics.jsonl"))),
                ("T12 recipes on the Wikipedia sample", recipes_table(read_jsonl(out / "t12_recipes.jsonl")))]
    for title, lines in sections:
        print(f"\n### {title}\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
