"""The one table of bench/gpu_check.sh: every figure it measured, against #23's targets.

    python bench/gpu_report.py <out dir>

Reads <out dir>/seed_final_dvc.json (bench/seed_final_dvc.sh), throughput.jsonl (bench/throughput.py --json),
precision_numerics.jsonl, seed_final_recipes.jsonl and t12_recipes.jsonl (research/recipe_sweep.py) and prints
markdown: the seed's final through `dvc exp run`, throughput and MFU per mode and batch, evaluation, the
quickstart's numerics per precision (where measured), and the recipes.
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
    lines = [
        f"T12 training on {train[0]['device']} (torch {train[0]['torch']}); measured peak: "
        f"{peak.get('low_precision', '?')} {peak.get('low_tflops', 0):.0f} TFLOP/s, "
        f"fp32 {peak.get('fp32_tflops', 0):.0f}",
        "",
        "| optimizer | mode | batch | tokens/s | ms/step | MFU | first 5 steps (compiling), s | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in train:
        if "error" in r:
            lines.append(f"| {r['optimizer']} | {r['mode']} | {r['batch_size']} | FAILED: {r['error'][:100]} | | | | |")
            continue
        target = ""
        if r["batch_size"] == 32 and r["mode"] == "reduce-overhead":
            target = f"MFU >= {MFU_TARGET:.0%}: {'met' if r['mfu'] >= MFU_TARGET else 'not met'}"
            if r["optimizer"] == "adamw":
                ratio = r["tokens_per_s"] / NANOGPT_ADAMW_TOKENS_PER_S
                met = "met" if ratio >= 1.3 else "not met"
                target += f"; {ratio:.2f}x nanoGPT's {NANOGPT_ADAMW_TOKENS_PER_S:,} (>= 1.3x: {met})"
        lines.append(
            f"| {r['optimizer']} | {r['mode']} | {r['batch_size']} | {r['tokens_per_s']:,.0f} | "
            f"{r['ms_per_step']:.2f} | {r['mfu']:.1%} | {r.get('warmup_seconds', float('nan')):.1f} | {target} |"
        )
    for r in (r for r in rows if r.get("kind") == "eval"):
        lines.append(
            f"| eval | {r['mode']} | {r.get('batch_size', '')} | "
            f"{'FAILED: ' + r['error'][:100] if 'error' in r else format(r['tokens_per_s'], ',.0f')} | | | | |"
        )
    return lines


def numerics_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no numerics figures)"]
    by_name = {r["name"]: r for r in rows}
    reference = by_name.get("quickstart_fp32", {}).get("test_bpc")
    lines = [
        "| quickstart in | val BPC | test BPC | test - fp32 | within 0.02 | steps | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
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
        lines.append(
            f"| {name.removeprefix('quickstart_')} | {r['val_bpc']:.4f} | {r['test_bpc']:.4f} | "
            f"{'' if diff is None else format(diff, '+.4f')} | {ok} | {r['iterations']}{skipped} | "
            f"{r['train_seconds']:.0f} |"
        )
    return lines


def seed_final_table(result: dict | None) -> list[str]:
    if result is None:
        return ["(not run)"]
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds} |" for stage, seconds in result["stage_seconds"].items()]
    if result["exit_status"]:
        lines += [
            "",
            f"FAILED in {result['failed_in']} (exit {result['exit_status']}): "
            + " / ".join(result.get("last_lines", []))[-400:],
        ]
    ev, train, lr = result.get("eval", {}), result.get("train_metrics", {}), result.get("lr_range_test", {})
    if lr:
        lines += [
            "",
            f"LR range test ({lr['method']}): suggested {lr.get('suggested_lr_min', float('nan')):.4g} -> "
            f"{lr['suggested_lr']:.4g}; the schedule's {lr['schedule_lr_min']} -> {lr['schedule_lr_max']}",
        ]
    if train:
        lines += [
            f"training: {train['iterations']} steps, {train['tokens_per_second']:,.0f} tokens/s, "
            f"val probe {train['val_probe_bpc']:.5f} BPC, {train['val_probe_accuracy']:.2%}"
        ]
    for split in ("val", "test"):
        name = next((k.removesuffix("_bpc") for k in ev if k.startswith(split) and k.endswith("_bpc")), None)
        if name:
            lines.append(
                f"{name} (stride {ev['protocol']['stride']}, {ev[name + '_bytes_scored']:,} bytes): "
                f"{ev[name + '_bpc']:.5f} BPC, accuracy {ev[name + '_accuracy']:.2%}, "
                f"{ev[name + '_seconds']} s"
            )
    return lines


def recipes_table(rows: list[dict], steps: int = 1200) -> list[str]:
    if not rows:
        return ["(no recipe figures)"]
    marks = (steps // 6, steps // 2, steps)
    lines = [
        f"| recipe ({steps} steps) | lr_max | val probe at {' / '.join(map(str, marks))} | mean grad norm | "
        "clipped | val BPC | test BPC | test accuracy | <= 1.60 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r.get("test_bpc", 99)):
        if "error" in r:
            lines.append(f"| {r['name']} | FAILED: {r['error'][:120]} | | | | | | | |")
            continue
        probe = {p["step"]: p["val_probe_bpc"] for p in r["curve"] if "val_probe_bpc" in p}
        mean = lambda key: [p[key] for p in r["curve"] if key in p]  # noqa: E731
        norms, clipped = mean("grad_norm"), mean("clipped_fraction")
        probes = " / ".join(format(probe[s], ".2f") if s in probe else "-" for s in marks)
        lines.append(
            f"| {r['name']} | {r['lr_max']:.3g} | {probes} | "
            f"{format(sum(norms) / len(norms), '.3g') if norms else '-'} | "
            f"{format(sum(clipped) / len(clipped), '.0%') if clipped else '-'} | {r['val_bpc']:.4f} | "
            f"{r['test_bpc']:.4f} | {format(r['test_accuracy'], '.2%') if 'test_accuracy' in r else '-'} | "
            f"{'yes' if r['test_bpc'] <= RECIPE_TARGET else 'no'} |"
        )
    return lines


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    seed = out / "seed_final_dvc.json"
    sections = [
        (
            "The seed's final through `dvc exp run` on the sample (cut to fit)",
            seed_final_table(json.loads(seed.read_text()) if seed.exists() else None),
        ),
        ("Throughput", throughput_table(read_jsonl(out / "throughput.jsonl"))),
        (
            "Numerics (the quickstart, same seed and LR, whole val/test splits)",
            numerics_table(read_jsonl(out / "precision_numerics.jsonl")),
        ),
        (
            "The seed's final and its variants at 19.7M training bytes (batch 16)",
            recipes_table(read_jsonl(out / "seed_final_recipes.jsonl"), steps=2400),
        ),
        ("T12 recipes on the Wikipedia sample (batch 32)", recipes_table(read_jsonl(out / "t12_recipes.jsonl"))),
    ]
    for title, lines in sections:
        print(f"\n### {title}\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
