#!/usr/bin/env python3
"""Merges the peer comparison's raw measurements (scripts/bench-peers.sh) into
results.json, a Markdown table (table.md, also printed) and a bar chart
(peers.png).

    report.py --raw DIR --out DIR

DIR/raw holds: meta.json (date, machine, options), torch.json (peers.py
torch), burn.json (scripts/peers/burn: Burn's training step), native-*.json
(`resnet-native bench --json`), web-resnet20.jsonl and web-resnet18.jsonl
(one line per backend of our page, as scripts/bench-web.sh prints them),
ort.jsonl (scripts/peers/ort.mjs). Any of them may be missing (skipped by an
option, or failed): its rows then say so.
"""

import argparse
import glob
import json
import os
import sys

# Workloads: key, title, unit, whether bigger is better.
WORKLOADS = [
    ("resnet20-infer-b1", "ResNet-20 inference, batch 1", "ms", False),
    ("resnet18-infer-b1", "ResNet-18 224x224 inference, batch 1", "ms", False),
    ("resnet20-train-b128", "ResNet-20 training step, batch 128", "img/s", True),
    ("resnet20-cold-start", "ResNet-20 cold start in the browser", "ms", False),
]
# Table columns: (system, backend) rows in this order.
SYSTEM_ORDER = ["PyTorch", "Burn", "ONNX Runtime Web", "ours (resnet-native)", "ours (web page)"]


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_lines(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip().startswith("{")]
    except (OSError, ValueError):
        return []


def collect(raw):
    """Every figure as a flat record."""
    meta = load_json(os.path.join(raw, "meta.json")) or {}
    rows = []

    def add(system, backend, adapter, workload, median, unit, **extra):
        rows.append({"system": system, "backend": backend, "adapter": adapter, "workload": workload,
                     "median": median, "unit": unit, **{k: v for k, v in extra.items() if v is not None}})

    cpu = meta.get("cpu") or "the CPU"
    torch = load_json(os.path.join(raw, "torch.json"))
    if torch:
        for r in torch["results"]:
            backend = f"CPU, {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
            system = f"PyTorch {torch['torch'].split('+')[0]}"
            extra = dict(reps=r["reps"], warmup=r["warmup"], threads=r["threads"])
            if r["workload"] == "resnet20 train b128":
                add(system, backend, f"{cpu}, {torch['cpus']} cores", "resnet20-train-b128", 128e3 / r["median_ms"], "img/s", step_ms=r["median_ms"], **extra)
            else:
                key = r["workload"].replace(" ", "-")
                add(system, backend, f"{cpu}, {torch['cpus']} cores", key, r["median_ms"], "ms", **extra)

    burn = load_json(os.path.join(raw, "burn.json"))
    if burn:
        add(burn["system"], burn["backend"], burn["adapter"], "resnet20-train-b128", 1e3 * burn["batch"] / burn["median_ms"], "img/s",
            step_ms=burn["median_ms"], reps=burn["reps"], warmup=burn["warmup"])

    for path in sorted(glob.glob(os.path.join(raw, "native-*.json"))):
        bench = load_json(path)
        if not bench:
            continue
        a = bench["adapter"]
        adapter = f"{a['name']} ({a['backend']}, {a['variant']} kernels)"
        wanted = {"resnet20 infer-folded b1": "resnet20-infer-b1", "resnet18 infer-folded b1": "resnet18-infer-b1",
                  "resnet20 train b128": "resnet20-train-b128"}
        for m in bench["models"]:
            key = wanted.get(m["name"])
            if key is None:
                continue
            extra = dict(reps=m["reps"], warmup=1, case=m["name"])
            if key == "resnet20-train-b128":
                add("ours (resnet-native)", "native wgpu", adapter, key, m["images_per_s"], "img/s", step_ms=m["ms"], **extra)
            else:
                add("ours (resnet-native)", "native wgpu", adapter, key, m["ms"], "ms", **extra)

    for model in ("resnet20", "resnet18"):
        lines = load_lines(os.path.join(raw, f"web-{model}.jsonl"))
        for r in lines:
            # bench-web.sh's runs: WebGPU forced, no WebGPU, and the default
            # `backend: "auto"` (named for what it picked on this adapter).
            run = r.get("run", r["backend"])
            picked = "WebGPU" if r["backend"] == "webgpu" else "CPU path"
            backend = {"webgpu": "WebGPU", "cpu": "wasm CPU path"}.get(run, f"auto (picked {picked})")
            extra = dict(reps=r.get("n"), warmup=3, end_to_end_ms=r.get("medianMs"), load_ms=r.get("loadMs"))
            adapter = r.get("adapter") if r["backend"] == "webgpu" else f"{cpu} via wasm, 1 thread"
            add("ours (web page)", backend, adapter, f"{model}-infer-b1", r.get("medianNetworkMs"), "ms", **extra)
            if model == "resnet20" and r.get("coldStartMs") is not None:
                add("ours (web page)", backend, adapter, "resnet20-cold-start", r["coldStartMs"], "ms")

    ort = load_lines(os.path.join(raw, "ort.jsonl"))
    version = next((r["version"] for r in ort if r.get("version")), "")
    for r in ort:
        system = f"ONNX Runtime Web {version}".strip()
        backend = {"webgpu": "WebGPU", "wasm": "wasm, 1 thread"}.get(r["ep"], r["ep"])
        key = f"{r['model']}-infer-b1"
        if r["ep"] == "wasm":
            r["adapter"] = f"{cpu} via wasm, 1 thread"
        if r.get("error"):
            add(system, backend, r.get("adapter"), key, None, None, error=r["error"], bundle=r.get("bundle"))
            if r["model"] == "resnet20":
                add(system, backend, r.get("adapter"), "resnet20-cold-start", None, None, error=r["error"])
            continue
        check = r.get("check") or {}
        extra = dict(reps=r["bench"]["n"], warmup=r["bench"]["warmup"], bundle=r.get("bundle"),
                     check_max_abs_diff=check.get("maxAbsDiff"), check_same_top1=check.get("sameTop1"))
        add(system, backend, r.get("adapter"), key, r["bench"]["medianMs"], "ms", **extra)
        if r.get("coldStartMs") is not None:
            add(system, backend, r.get("adapter"), "resnet20-cold-start", r["coldStartMs"], "ms")
    rows += notes(os.path.join(raw, "notes.tsv"), rows)
    return meta, rows


# What each system measures, for expanding notes.tsv's "all".
FAMILIES = {
    "PyTorch": (["CPU, 2 threads", "CPU, 1 thread"], ["resnet20-infer-b1", "resnet18-infer-b1", "resnet20-train-b128"]),
    "Burn": (["wgpu (fusion, autotune)"], ["resnet20-train-b128"]),
    "ONNX Runtime Web": (["WebGPU", "wasm, 1 thread"], ["resnet20-infer-b1", "resnet18-infer-b1", "resnet20-cold-start"]),
    "ours (resnet-native)": (["native wgpu"], ["resnet20-infer-b1", "resnet18-infer-b1", "resnet20-train-b128"]),
    "ours (web page)": (["WebGPU", "wasm CPU path"], ["resnet20-infer-b1", "resnet18-infer-b1", "resnet20-cold-start"]),
}


def notes(path, rows):
    """Rows for the figures that failed or were skipped (notes.tsv: kind,
    system, backend, workload, message; "all", or a workload prefix such as
    "resnet20", stands for several), where no figure was measured."""
    out = []
    try:
        with open(path) as f:
            lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    except OSError:
        return out
    for kind, system, backend, workload, message in lines:
        backends, workloads = FAMILIES.get(system, ([backend], [workload]))
        named = next((r["system"] for r in rows if family(r["system"]) == system), system)
        for b in backends if backend == "all" else [backend]:
            for w in workloads:
                if not (workload == "all" or w == workload or w.startswith(workload + "-")):
                    continue
                if any(family(r["system"]) == system and r["backend"] == b and r["workload"] == w for r in rows + out):
                    continue
                out.append({"system": named, "backend": b, "adapter": None, "workload": w, "median": None, "unit": None,
                            ("error" if kind == "error" else "skipped"): message})
    return out


def family(system):
    for name in SYSTEM_ORDER:
        if system.startswith(name.split(" (")[0]) and (("(" not in name) or name in system):
            return name
    return system


def row_order(row):
    fam = family(row["system"])
    backends = FAMILIES.get(fam, ([], []))[0]
    return (SYSTEM_ORDER.index(fam) if fam in SYSTEM_ORDER else 99,
            backends.index(row["backend"]) if row["backend"] in backends else 99, row["backend"])


def fmt(value, unit):
    if value is None:
        return "—"
    if unit == "img/s":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def table(meta, rows, paired=()):
    lines = []
    combos = []
    for r in sorted(rows, key=row_order):
        combo = (r["system"], r["backend"])
        if combo not in combos:
            combos.append(combo)
    notes = []
    header = ["System", "Backend", "Adapter / CPU"] + [f"{title} ({unit}{', higher is better' if better else ''})" for _, title, unit, better in WORKLOADS]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * 3 + "---:|" * len(WORKLOADS))
    for system, backend in combos:
        mine = [r for r in rows if (r["system"], r["backend"]) == (system, backend)]
        adapters = sorted({r["adapter"] for r in mine if r.get("adapter")})
        cells = [system, backend, "; ".join(adapters) or "—"]
        for key, _, unit, _ in WORKLOADS:
            r = next((r for r in mine if r["workload"] == key), None)
            if r is None:
                cells.append("—")
            elif r.get("error") or r.get("skipped"):
                note = f"failed: {r['error']}" if r.get("error") else f"not run: {r['skipped']}"
                if note not in notes:
                    notes.append(note)
                cells.append(f"{'failed' if r.get('error') else 'not run'} [{notes.index(note) + 1}]")
            else:
                cell = fmt(r["median"], unit)
                if r.get("end_to_end_ms") is not None:
                    cell += f" ({fmt(r['end_to_end_ms'], 'ms')})"
                if r.get("check_same_top1") is False:
                    notes.append(f"{system}, {backend}, {key}: the ONNX output's top-1 differs from PyTorch's (max |diff| {r.get('check_max_abs_diff')})")
                    cell += f" [{len(notes)}]"
                cells.append(cell)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    checks = [r for r in rows if r.get("check_max_abs_diff") is not None]
    if checks:
        worst = {}
        for r in checks:
            model = r["workload"].split("-")[0]
            worst[model] = max(worst.get(model, 0), r["check_max_abs_diff"])
        text += ("\nSame networks: on PyTorch's check input, ONNX Runtime Web's logits (every EP) differ from "
                 "PyTorch's by at most " + ", ".join(f"{v:.1e} ({m})" for m, v in worst.items()) +
                 "; top-1 " + ("agrees" if all(r.get("check_same_top1") for r in checks) else "DISAGREES somewhere") + ".\n")
    train = {family(r["system"]): r for r in rows if r["workload"] == "resnet20-train-b128" and r.get("median")}
    if "Burn" in train and "ours (resnet-native)" in train:
        burn, ours = train["Burn"], train["ours (resnet-native)"]
        text += (f"\nResNet-20 training step, batch 128, in the same run: ours {fmt(ours['median'], 'img/s')} img/s on "
                 f"{ours['adapter']}, Burn {fmt(burn['median'], 'img/s')} img/s on {burn['adapter']}: "
                 f"**{ours['median'] / burn['median']:.1f}x** Burn's images per second.\n")
    if paired:
        text += ("\nPaired in one V8 process (Node " + paired[0]["node"] + ", one thread each; ours as the page's "
                 "`inferenceMs`, ORT Web " + paired[0]["ort"] + "'s wasm `session.run`, taken in turn), median over "
                 "the pairs of ours / ORT: " +
                 ", ".join(f"{p['model']} {p['ours_over_ort']:.2f} ({p['ours_ms']:.1f} vs {p['ort_ms']:.1f} ms, "
                           f"{p['pairs']} pairs)" for p in paired) + ".\n")
    if notes:
        text += "\n" + "\n".join(f"[{i + 1}] {n.replace(chr(10), ' ')}" for i, n in enumerate(notes)) + "\n"
    return text


def chart(meta, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    colours = {"PyTorch": "#ee7733", "Burn": "#cc3311", "ONNX Runtime Web": "#0077bb", "ours (resnet-native)": "#009988", "ours (web page)": "#33bbee"}
    groups = [sorted([r for r in rows if r["workload"] == key], key=row_order) for key, *_ in WORKLOADS]
    fig, axes = plt.subplots(len(WORKLOADS), 1, figsize=(10, 2.2 + 0.42 * sum(len(g) + 1.2 for g in groups)),
                             gridspec_kw={"height_ratios": [len(g) + 1.2 for g in groups]})
    for ax, mine, (key, title, unit, better) in zip(axes, groups, WORKLOADS):
        labels = [f"{r['system']} · {r['backend']}" for r in mine]
        values = [r["median"] for r in mine]
        present = [v for v in values if v]
        y = list(range(len(mine)))
        ax.barh(y, [v or 1e-9 for v in values], height=0.7, color=[colours.get(family(r["system"]), "#999999") for r in mine])
        ax.set_yticks(y, labels, fontsize=8.5)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(*((min(present) / 3, max(present) * 8) if present else (1, 10)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        for i, (r, v) in enumerate(zip(mine, values)):
            if v:
                ax.text(v * 1.08, i, f"{fmt(v, unit)} {unit}", va="center", fontsize=8)
            else:
                why = "failed (see the table)" if r.get("error") else "not run (see the table)"
                ax.text(ax.get_xlim()[0] * 1.1, i, why, va="center", fontsize=8, color="#cc3311")
        ax.set_title(f"{title}: {unit}, log scale, {'higher' if better else 'lower'} is better", fontsize=10)
        ax.grid(axis="x", which="major", alpha=0.3)
    adapters = sorted({r["adapter"].split(" (")[0] for r in rows if r.get("adapter") and "via wasm" not in r["adapter"] and "cores" not in r["adapter"]})
    fig.suptitle(f"Peer comparison, {meta.get('date', '')}: {meta.get('machine', '')}\n"
                 f"GPU adapters (all on the CPU): {', '.join(adapters) or 'none'}; a loaded machine, so the figures are noisy",
                 fontsize=9.5)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    meta, rows = collect(args.raw)
    paired = load_lines(os.path.join(args.raw, "wasm-paired.jsonl"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "workloads": [{"key": k, "title": t, "unit": u, "higher_is_better": b} for k, t, u, b in WORKLOADS],
                   "results": rows, "wasm_paired": paired}, f, indent=1)
    text = table(meta, rows, paired)
    header = (f"Measured {meta.get('date', '?')} on {meta.get('machine', '?')}; {meta.get('browser', '')}. "
              f"Medians of {meta.get('convention', 'N runs after a warm-up')}.\n\n")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(header + text)
    print(header + text)
    chart(meta, rows, os.path.join(args.out, "peers.png"))
    print(f"wrote {args.out}/results.json, table.md, peers.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
