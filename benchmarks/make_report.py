"""Write ``docs/performance.md`` (and its plots), the generated parts of ``docs/performance-service.md`` and the
README's measured table from ``benchmarks/results/*.json``, each section by its benchmark's ``tables``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from benchmarks import readme_figures
from benchmarks._common import ROOT, Table, format_ns

DOC = ROOT / "docs" / "performance.md"
SERVICE_DOC = ROOT / "docs" / "performance-service.md"
IMG_DIR = ROOT / "docs" / "img"
# Sections in this order; any other result file follows, alphabetically.
ORDER = ("latency_table", "peers", "hit_rates", "memory", "service_load")
TITLES = {
    "latency_table": "The seed's latency table: mediator and HTTP",
    "peers": "hybridcache next to cashews and aiocache (same workload, same run)",
    "hit_rates": "Hit rates under a Zipf workload with the seed's settings",
    "memory": "Memory per entry: L1 and L2, and whether compression would pay",
}
#: The module whose ``tables`` renders a result file, where it is not ``benchmarks.bench_<name>``.
RENDERERS = {"run": "benchmarks.__main__", "ab_cache": "benchmarks.ab"}
HC_BLUE, GREY = "#1f6feb", "#8b949e"

Document = dict[str, Any]


def provenance(name: str, doc: Document) -> list[str]:
    """Where a section's figures come from: file, command, time, machine."""
    machine = doc.get("machine") or {}
    facts = [
        f"{key.replace('_', ' ')}: {', '.join(map(str, v)) if isinstance(v := machine[key], list) else v}"
        for key in ("cpu", "cpus", "load_average", "python", "redis_server", "git_commit")
        if key in machine
    ]
    if isinstance(packages := machine.get("packages"), dict):
        facts.append("packages: " + ", ".join(f"{k} {v}" for k, v in packages.items()))
    if "load_average_at_start" in doc:
        facts.append(f"load average at the start: {', '.join(map(str, doc['load_average_at_start']))}")
    if "elapsed_seconds" in doc:
        facts.append(f"{doc['elapsed_seconds']:g} s")
    if "peer_versions" in doc:
        facts.append("peers: " + ", ".join(f"{k} {v}" for k, v in doc["peer_versions"].items()))
    lines = [f"*File:* `benchmarks/results/{name}.json`"]
    if "command" in doc:
        lines.append(f"*Command:* `{doc['command']}` — *generated* {doc.get('generated_at')}")
    if facts:
        lines.append("*Machine:* " + "; ".join(facts))
    return ["  \n".join(lines), ""]


def renderer(name: str) -> Callable[[Document], Sequence[Table]]:
    tables: Callable[[Document], Sequence[Table]] = importlib.import_module(
        RENDERERS.get(name, f"benchmarks.bench_{name}")
    ).tables
    return tables


def peers_plot(doc: Document) -> Any:
    """Memory-tier hits (log scale) and Redis hit / miss per contender, side by side."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    memory = [(r["name"], r["memory_hit_ns"] / 1000) for r in doc["rows"] if r["memory_hit_ns"]][::-1]
    left.barh(
        [n for n, _ in memory],
        [v for _, v in memory],
        color=[HC_BLUE if n.startswith("hybridcache") else GREY for n, _ in memory],
    )
    left.set(
        xscale="log", xlabel="µs per hit (log scale), lower is better", title="Memory-tier hit (read-through call)"
    )
    for y, (_, v) in enumerate(memory):
        left.text(v, y, f" {v:,.2f}" if v < 10 else f" {v:,.0f}", va="center", fontsize=8)
    redis = [(r["name"], r["redis_hit_us"], r["miss_us"] or 0) for r in doc["rows"] if r["redis_hit_us"]][::-1]
    ys = range(len(redis))
    right.barh(
        [y + 0.2 for y in ys],
        [h for _, h, _ in redis],
        height=0.4,
        label="Redis hit (from a 2nd instance)",
        color="#2da44e",
    )
    right.barh(
        [y - 0.2 for y in ys], [m for _, _, m in redis], height=0.4, label="miss (store included)", color="#d29922"
    )
    right.set_yticks(list(ys), [n for n, _, _ in redis])
    right.set(xlabel="µs per call (median), lower is better", title="Redis hit and miss")
    right.legend(loc="lower right", fontsize=8)
    return figure


def hit_rates_plot(doc: Document) -> Any:
    """Stacked L1 / L2 hit rate per query kind, steady state, one group per scenario."""
    count = len(doc["scenarios"])
    figure, axes = plt.subplots(1, count, figsize=(5 * count, 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    for axis, outcome in zip(axes, doc["scenarios"], strict=True):
        kinds = outcome["results"]["second_half"]
        l1, l2 = [kinds[k]["l1_hit_rate"] * 100 for k in kinds], [kinds[k]["l2_hit_rate"] * 100 for k in kinds]
        axis.bar(list(kinds), l1, label="L1 hit", color=HC_BLUE)
        axis.bar(list(kinds), l2, bottom=l1, label="L2 hit", color="#79c0ff")
        for x, kind in enumerate(kinds):
            axis.text(x, l1[x] + l2[x] + 1, f"{kinds[kind]['hit_rate'] * 100:.1f}%", ha="center", fontsize=9)
        axis.axhline(95, color="#cf222e", linestyle="--", linewidth=1, label="95% (entity target)")
        axis.set(ylim=(0, 108), title=f"{outcome['scenario']['name']} (steady state)")
    axes[0].set_ylabel("% of requests")
    axes[-1].legend(loc="lower right", fontsize=8)
    return figure


def memory_plot(doc: Document) -> Any:
    """Redis ``MEMORY USAGE`` per entry, plain vs zlib, per value kind."""
    (figure, axis), rows = plt.subplots(figsize=(8, 4)), doc["l2"]
    xs = range(len(rows))
    plain = [r["redis_memory_usage_bytes"] / 1024 for r in rows]
    zlib1 = [r["compression"]["zlib-1"]["redis_memory_usage_bytes"] / 1024 for r in rows]
    axis.bar([x - 0.2 for x in xs], plain, width=0.4, label="as stored (JSON)", color=GREY)
    axis.bar([x + 0.2 for x in xs], zlib1, width=0.4, label="zlib level 1", color="#2da44e")
    axis.set_xticks(list(xs), [r["value"] for r in rows], fontsize=8)
    axis.set(ylabel="KiB per entry in Redis (MEMORY USAGE)", title="L2 memory per entry")
    axis.legend(fontsize=8)
    return figure


#: name: (plot, file, alt text).
PLOTS: dict[str, tuple[Callable[[Document], Any], str, str]] = {
    "peers": (peers_plot, "peers_latency.png", "hit and miss latency per contender"),
    "hit_rates": (hit_rates_plot, "hit_rates.png", "L1 and L2 hit rate per query kind"),
    "memory": (memory_plot, "memory_l2.png", "Redis memory per entry, plain and zlib"),
}


def plot(name: str, doc: Document) -> str:
    """Draw ``name``'s plot into ``docs/img``; its file name."""
    draw, image, _ = PLOTS[name]
    figure = draw(doc)
    figure.tight_layout()
    figure.savefig(IMG_DIR / image, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return image


def section(name: str, doc: Document, images: list[str]) -> list[str]:
    out = [f"## {TITLES.get(name, name.replace('_', ' ').capitalize())}", "", *provenance(name, doc)]
    source = f"<sub>Source: `benchmarks/results/{name}.json`</sub>"
    try:
        shown = renderer(name)(doc)
    except Exception as exc:  # a file without a renderer (or one it cannot read) still gets its section
        return [*out, f"(no tables: {exc.__class__.__name__}: {exc})", ""]
    for table in shown:
        out += [table.markdown(), "", source, ""]
    if name in PLOTS:
        images.append(plot(name, doc))
        out += [f"![{PLOTS[name][2]}](img/{images[-1]})", "", source, ""]
    return out


def build(documents: dict[str, Document]) -> tuple[str, list[str]]:
    images: list[str] = []
    lines = [
        "# Performance",
        "",
        "<!-- Generated by `python -m benchmarks.make_report` from benchmarks/results/*.json; do not edit by hand. -->",
        "",
        "Every figure on this page is read from a JSON file in `benchmarks/results/`, named under each table, "
        "with the command that produced it and the machine it ran on. Regenerate with `make bench` (runs every "
        "benchmark) and then `.venv/bin/python -m benchmarks.make_report`. The machine is shared: each section "
        "gives the load average at the time, and comparisons within one file (one run) are the ones to trust.",
        "",
        "## Targets (issue 7)",
        "",
        *readme_figures.table(documents),  # the README's measured table
        "",
    ]
    for name in [n for n in ORDER if n in documents] + sorted(n for n in documents if n not in ORDER):
        lines += section(name, documents[name], images)
    return "\n".join(lines).rstrip() + "\n", images


#: A region of docs/performance-service.md that ``service_page`` rewrites; the prose around it is the page's own.
GENERATED = re.compile(r"(<!-- generated: (\w+) -->)(.*?)(<!-- end -->)", re.DOTALL)


def ms(us: float) -> str:
    return format_ns(us * 1000)


def service_page(documents: dict[str, Document], page: str) -> str:
    """``page`` with its generated regions rewritten; a region with no figure keeps its text."""
    parts: dict[str, str] = {}
    cells = documents.get("latency_table", {}).get("cells", ())
    delayed = [
        c
        for c in cells
        if (c["path"], c["operation"], c["cache"]) == ("mediator", "single entity", "none") and c["delay_ms"] > 0
    ]
    if delayed:
        c = max(delayed, key=lambda c: (c["delay_ms"], c["database"] == "postgresql"))
        slept = ms(c["simulated_per_request"]["slept_us"])
        parts["slept"] = (
            f"e.g. +{c['delay_ms']:g} ms on {c['database']}: {slept} slept per single-entity read, on average"
        )
    for path in ("mediator", "http"):
        if hits := [c["median_us"] for c in cells if c["path"] == path and c["cache"] == "l1+l2"]:
            parts[f"{path}_hits"] = f"{ms(min(hits))} to {ms(max(hits))}"
    for name in ("latency_table", "service_load"):
        if (document := documents.get(name)) is None:
            parts[name] = f"*No `benchmarks/results/{name}.json` yet: run `python -m benchmarks {name}`.*"
            continue
        lines = [t.markdown() + "\n" for t in renderer(name)(document)] + provenance(name, document)
        if name == "service_load":
            s = document["settings"]
            lines.insert(0, f"`{s['wrk']}`, {s['warmup_seconds']} s warm-up per route; {s['server']}.\n")
        parts[name] = "\n".join(lines)

    def fill(match: re.Match[str]) -> str:
        text = parts.get(match[2], match[3])
        return match[1] + (f"\n{text.strip()}\n" if match[3].startswith("\n") else text) + match[4]

    return GENERATED.sub(fill, page)


def main() -> None:
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    documents = readme_figures.load()
    text, images = build(documents)
    DOC.write_text(text)
    print(f"wrote {DOC} and {len(images)} plots: {', '.join(images) or 'none'}")
    SERVICE_DOC.write_text(service_page(documents, SERVICE_DOC.read_text()))
    print(f"wrote {SERVICE_DOC}")
    if readme_figures.update_readme(documents):
        print(f"updated the measured figures in {readme_figures.README}")


if __name__ == "__main__":
    main()
