#!/usr/bin/env python
"""Render recorded GPU benchmark results as markdown (the README's performance section).

    python benchmarks/render_table.py                    # print the section
    python benchmarks/render_table.py --update README.md # replace the text between
                                                         # <!-- perf-table:start --> and
                                                         # <!-- perf-table:end -->

Reads the latest ``benchmarks/results/*.json`` written by
``benchmarks/gpu_suite.py`` on a CUDA device (CPU smoke results are never
rendered as figures).  With no GPU results it writes a sentence saying the GPU
figures are pending: numbers only ever come from a results file.
Standard library only; ``gpu_suite.py`` uses ``render_markdown`` for the
``.md`` it writes next to each results file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DASH = "—"

PENDING = ("GPU benchmark figures are pending: no GPU results have been recorded in "
           "`benchmarks/results/` yet. On a CUDA machine `python benchmarks/gpu_suite.py` measures "
           "them, and `python benchmarks/render_table.py --update README.md` puts them here.")


# ----------------------------------------------------------------------------- loading


def is_gpu_result(data) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("benchmarks"), list) and not data.get("smoke")
            and (data.get("device") or {}).get("type") == "cuda")


def load_latest(results_dir=RESULTS_DIR):
    """(path, data) of the newest GPU results file in ``results_dir``, or None."""
    results_dir = Path(results_dir)
    found = []
    for path in sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if is_gpu_result(data):
            found.append(((str(data.get("timestamp") or data.get("date") or ""), path.name), path, data))
    if not found:
        return None
    _, path, data = max(found, key=lambda t: t[0])
    return path, data


# ----------------------------------------------------------------------------- formatting


def fmt_ms(v) -> str:
    if v is None:
        return DASH
    return f"{v:.3f}" if v >= 0.1 else f"{v:.4f}"


def fmt_ratio(v) -> str:
    return DASH if v is None else f"{v:.2f}×"


def fmt_mb(v) -> str:
    return DASH if v is None else f"{v:.1f}"


def fmt_shape(shape) -> str:
    return "×".join(str(s) for s in shape) if shape else DASH


def _header(data, source=None) -> list[str]:
    dev = data.get("device") or {}
    ver = data.get("versions") or {}
    bits = [f"**{dev.get('name', 'unknown device')}**"]
    for label, key in (("torch", "torch"), ("Triton", "triton"), ("CUDA", "torch_cuda"), ("nvcc", "nvcc"),
                       ("driver", "driver")):
        if ver.get(key):
            bits.append(f"{label} {ver[key]}")
    line = ", ".join(bits) + f"; {data.get('date', 'undated')}"
    if data.get("git", {}).get("commit"):
        line += f", commit `{data['git']['commit'][:10]}`" + (" (dirty tree)" if data["git"].get("dirty") else "")
    if source:
        line += f"; from `{source}`"
    lines = [line + "."]
    if data.get("git", {}).get("commit"):  # (static text: the rendered table must not change with each commit)
        lines += ["", "These numbers are that commit's: work landed since (listed in the notes below the tables) "
                      "is not in them until the GPU suite runs again."]
    tests = (data.get("stages") or {}).get("tests") or {}
    summary = tests.get("summary")
    if summary:
        lines.append("")
        where = "this GPU" if dev.get("type") == "cuda" else "this machine"
        lines.append(f"Test suite on {where}: " + ", ".join(
            f"{summary[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if summary.get(k) is not None)
            + (f" (stage {tests.get('status')})" if tests.get("status") not in (None, "ok") else "") + ".")
    timers = sorted({r.get("timer") for r in data.get("benchmarks", []) if r.get("timer")})
    flushed = any(t in ("do_bench", "cuda_events") for t in timers)
    lines.append("")
    lines.append("Median time per call (" + (", ".join(timers) or "no timer")
                 + ("; L2 cache flushed before each timed call" if flushed else "") + "); "
                 "vs eager / vs compile = baseline time / fastgan time (above 1 = fastgan faster); "
                 "peak memory = CUDA memory allocated during one call beyond its inputs.")
    return lines


def _preferred(records):
    """Per comparison group, the record of the impl ``auto`` would pick (cuda, else triton, else ref)."""
    rank = {"cuda": 0, "triton": 1, "ref": 2}
    best = {}
    for r in records:
        k = (r.get("op"), r.get("case"), tuple(r.get("shape") or ()), r.get("dtype"), r.get("variant", ""))
        if k not in best or rank.get(r.get("impl"), 9) < rank.get(best[k].get("impl"), 9):
            best[k] = r
    return [r for r in records if best.get((r.get("op"), r.get("case"), tuple(r.get("shape") or ()),
                                            r.get("dtype"), r.get("variant", ""))) is r]


def _compile_cell(r) -> str:
    """torch.compile's time, or why there is none (it cannot do double backward)."""
    if r.get("compile_ms") is not None:
        return fmt_ms(r["compile_ms"])
    return "n/a" if r.get("case") == "double_backward" else DASH


def _memory_cell(r) -> str:
    return f"{fmt_mb(r.get('peak_mem_mb'))} / {fmt_mb(r.get('eager_peak_mem_mb'))}"


def is_train_step(r) -> bool:
    """Whole training iterations (benchmarks/bench_train_step.py) get their own table."""
    return str(r.get("op", "")).endswith("_step")


def _train_step_rows(records, all_impls: bool):
    rows = [r for r in records if not r.get("baseline") and is_train_step(r)]
    if not all_impls:
        rows = _preferred(rows)
    out = ["| training iteration | batch | dtype | impl | images/s | fastgan ms | eager ms | compile ms "
           "| vs eager | vs compile | peak MiB fastgan / eager | host ms fastgan / eager |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        graph = str(r.get("variant", "")).endswith("-graph")
        compile_cell = _compile_cell(r)
        vs_eager = fmt_ratio(r.get("vs_eager"))
        if graph:
            # Both sides captured; the uncaptured eager step is the figure a user compares with.
            vs_eager = f"{vs_eager} (vs uncaptured eager: {fmt_ratio(r.get('vs_eager_plain'))})"
        elif r.get("vs_eager") is None and r.get("vs_eager_plain") is not None:
            # a fastgan-only form of the step (one D pass): against the eager step a user writes
            vs_eager = f"{fmt_ratio(r.get('vs_eager_plain'))} (vs eager {r.get('plain_variant')})"
        ips = r.get("images_per_s")
        out.append(f"| {r.get('op')} ({r.get('variant')}) | {(r.get('shape') or ['?'])[0]} | {r.get('dtype')} "
                   f"| {r.get('impl')}{' + CUDA graph' if graph else ''} | {DASH if ips is None else f'{ips:.0f}'} "
                   f"| {fmt_ms(r.get('median_ms'))} "
                   f"| {fmt_ms(r['eager_ms'] if r.get('eager_ms') is not None else r.get('eager_plain_ms'))} "
                   f"| {compile_cell} | {vs_eager} "
                   f"| {fmt_ratio(r.get('vs_compile'))} "
                   f"| {_memory_cell(r)} | {_host_cell(r)} |")
    return out if len(out) > 2 else []


def _host_cell(r) -> str:
    """Host time to issue one iteration (benchmarks/conftest.py ``host_ms``): near the GPU time, the
    step is bound by the host."""
    return f"{fmt_ms(r.get('host_ms'))} / {fmt_ms(r.get('eager_host_ms'))}"


def _op_rows(records, all_impls: bool):
    rows = [r for r in records if not r.get("baseline") and not str(r.get("case", "")).startswith("pass:")
            and not is_train_step(r)]
    if not all_impls:
        rows = _preferred(rows)
    out = ["| op | case | shape | dtype | impl | fastgan ms | eager ms | compile ms | vs eager | vs compile "
           "| peak MiB fastgan / eager |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        compile_cell = _compile_cell(r)
        out.append(f"| {r.get('op')} | {r.get('case')} | {fmt_shape(r.get('shape'))}"
                   f"{' (' + r['variant'] + ')' if r.get('variant') else ''} | {r.get('dtype')} | {r.get('impl')} "
                   f"| {fmt_ms(r.get('median_ms'))} | {fmt_ms(r.get('eager_ms'))} | {compile_cell} "
                   f"| {fmt_ratio(r.get('vs_eager'))} | {fmt_ratio(r.get('vs_compile'))} "
                   f"| {_memory_cell(r)} |")
    return out if len(out) > 2 else []


def _bandwidth_rows(records, all_impls: bool):
    rows = [r for r in records if not r.get("baseline") and r.get("bandwidth_gbps") is not None]
    if not all_impls:
        rows = _preferred(rows)
        # README: the passes that have a bandwidth goal (the elementwise ones) only.
        rows = [r for r in rows if "copy_fraction" in (r.get("targets") or {})] or rows
    out = ["| op | pass | shape | dtype | impl | ms | GB/s | copy GB/s | of copy |",
           "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        frac = r.get("copy_fraction")
        out.append(f"| {r.get('op')} | {str(r.get('case')).removeprefix('pass:')} | {fmt_shape(r.get('shape'))} "
                   f"| {r.get('dtype')} | {r.get('impl')} | {fmt_ms(r.get('median_ms'))} "
                   f"| {r.get('bandwidth_gbps'):.0f} | "
                   f"{DASH if r.get('copy_bandwidth_gbps') is None else format(r['copy_bandwidth_gbps'], '.0f')} "
                   f"| {DASH if frac is None else format(frac, '.0%')} |")
    peaks = [r for r in records if r.get("impl") == "copy" and r.get("variant") == "peak"
             and r.get("bandwidth_gbps") is not None]
    if len(out) > 2 and peaks:
        out.append("")
        out.append("Device copy bandwidth at full occupancy (`torch.empty_like(x).copy_(x)`, "
                   + ", ".join(f"{fmt_shape(r['shape'])} {r['dtype']}: {r['bandwidth_gbps']:.0f} GB/s" for r in peaks)
                   + ").")
    return out if len(out) > 2 else []


def _target_lines(data) -> list[str]:
    targets = data.get("targets") or []
    judged = [t for t in targets if t.get("met") is not None]
    if not judged:
        return []
    met = sum(1 for t in judged if t["met"])
    lines = [f"Targets met: {met} of {len(judged)}."]
    missed = [t for t in judged if not t["met"]]
    for t in missed[:12]:
        variant = f" ({t['variant']})" if t.get("variant") else ""
        lines.append(f"- missed: {t['op']}{variant} {t['case']} {fmt_shape(t['shape'])} {t['dtype']} {t['impl']}: "
                     f"{t['metric']} {t['value']:.2f} < {t['goal']}")
    if len(missed) > 12:
        lines.append(f"- ... and {len(missed) - 12} more (see the results file)")
    return lines


def render_markdown(data, source=None, all_impls: bool = True) -> str:
    """Markdown tables for one results dict (as written by gpu_suite.py)."""
    records = data.get("benchmarks") or []
    lines = _header(data, source)
    if data.get("smoke"):
        lines.insert(0, "**CPU smoke run: tiny sizes, not performance figures.**")
        lines.insert(1, "")
    ops = _op_rows(records, all_impls)
    bw = _bandwidth_rows(records, all_impls)
    steps = _train_step_rows(records, all_impls)
    if ops:
        lines += ["", *ops]
    if steps:
        lines += ["", "Whole training iterations (D step + G step, Adam; WGAN-GP: 5 critic steps with the "
                      "gradient penalty + 1 G step):", "", *steps]
        if any(row.startswith("| ") and "-cl) |" in row for row in steps):
            lines += ["", "`-cl`: channels-last (NHWC) weights, images and activations in both models, "
                          "compared with eager in the same layout."]
    if bw:
        lines += ["", "Effective bandwidth of single kernel passes (bytes each pass must read and write / time), "
                      "against a device copy of the same tensor:", "", *bw]
    if not ops and not bw and not steps:
        lines += ["", "No benchmark records in this results file."]
    tl = _target_lines(data)
    if tl:
        lines += ["", *tl]
    return "\n".join(lines) + "\n"


def render_section(results_dir=RESULTS_DIR, all_impls: bool = False) -> str:
    """The README section: the latest GPU results, or the pending sentence."""
    latest = load_latest(results_dir)
    if latest is None:
        return PENDING + "\n"
    path, data = latest
    try:
        source = path.resolve().relative_to(Path(__file__).resolve().parent.parent).as_posix()
    except ValueError:
        source = path.name
    return render_markdown(data, source=source, all_impls=all_impls)


def update_file(path, section: str) -> bool:
    """Replace the text between the markers in ``path``; False when unchanged."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"{path}: markers {START} ... {END} not found (add them where the table goes)")
    new = text[: i + len(START)] + "\n" + section.rstrip("\n") + "\n" + text[j:]
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(RESULTS_DIR), help="results directory (default benchmarks/results)")
    p.add_argument("--update", metavar="FILE", help="replace the marked section of FILE (e.g. README.md)")
    p.add_argument("--all-impls", action="store_true",
                   help="one row per fastgan backend (default: the backend impl='auto' picks)")
    args = p.parse_args(argv)
    section = render_section(args.results, all_impls=args.all_impls)
    if args.update:
        try:
            changed = update_file(args.update, section)
        except (OSError, ValueError) as exc:
            print(f"render_table: {exc}", file=sys.stderr)
            return 1
        print(f"render_table: {args.update} {'updated' if changed else 'already up to date'}")
    else:
        sys.stdout.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
