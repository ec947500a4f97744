"""Build ``docs/performance.md`` (with its plots, ``docs/img/*.png``) and ``docs/performance-service.md`` from
``benchmarks/results/*.json``, and the README's measured table (``readme_figures``).

Run: ``.venv/bin/python -m benchmarks.make_report`` after the benchmarks (``make bench``). Nothing is measured
here: every figure is read from a result file, each section names its file, the command that produced it and
the machine it ran on. A section shows the tables the benchmark itself prints (``bench_<name>.tables``), so the
console and the page cannot disagree; a file without such a module is shown by a generic renderer.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from benchmarks import readme_figures
from benchmarks._common import RESULTS_DIR, ROOT, Table, fmt, format_ns

DOC = ROOT / "docs" / "performance.md"
SERVICE_DOC = ROOT / "docs" / "performance-service.md"
IMG_DIR = ROOT / "docs" / "img"
# Sections in this order; any other result file follows, alphabetically.
ORDER = ("latency_table", "peers", "hit_rates", "memory", "service_load")
LATENCY_MARK = "<!-- section: latency_table — owned by benchmarks/bench_latency_table.py (mediator and HTTP) -->"
TITLES = {
    "latency_table": "The seed's latency table: mediator and HTTP",
    "peers": "hybridcache next to cashews and aiocache (same workload, same run)",
    "hit_rates": "Hit rates under a Zipf workload with the seed's settings",
    "memory": "Memory per entry: L1 and L2, and whether compression would pay",
}
# Bulky internals that help whoever tunes the code but not a reader of the page (they stay in the JSON).
META_KEYS = {"benchmark", "command", "generated_at", "machine", "diagnostics", "samples", "top_by_own_time"}

Document = dict[str, Any]


def load_results(directory: Path = RESULTS_DIR) -> dict[str, Document]:
    """Every ``*.json`` in ``directory`` by file stem (a file that does not parse is reported, not skipped)."""
    documents: dict[str, Document] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            documents[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            documents[path.stem] = {"unreadable": f"{exc.__class__.__name__}: {exc}"}
    return documents


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


def source_line(name: str) -> str:
    return f"<sub>Source: `benchmarks/results/{name}.json`</sub>"


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key not in META_KEYS:
            flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def generic(doc: Document) -> list[Table]:
    """A result file without a ``tables`` function: its scalars, then each list or dict of records, as tables."""
    flat = {
        k: v for k, v in _flatten(doc).items() if not isinstance(v, list) or all(not isinstance(x, dict) for x in v)
    }
    out = [Table(["", "value"], [[k, fmt(v)] for k, v in flat.items()])] if flat else []
    for key, value in doc.items():
        records = (
            list(value.items())
            if isinstance(value, dict)
            else list(enumerate(value, 1))
            if isinstance(value, list)
            else []
        )
        if records and all(isinstance(r, dict) for _, r in records):
            flats = [(str(label), _flatten(r)) for label, r in records]
            columns = list(dict.fromkeys(c for _, f in flats for c in f))
            out.append(
                Table(["", *columns], [[label, *(fmt(f.get(c)) for c in columns)] for label, f in flats], f"**{key}**")
            )
    return out


def module_tables(name: str) -> Callable[[Document], Sequence[Table]] | None:
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
    except Exception:  # a result file without (or with a broken) script is still shown, generically
        return None
    tables = getattr(module, "tables", None)
    return tables if callable(tables) else None


# ---------------------------------------------------------------------------------------------- plots


def _save(figure: Any, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return True


def peers_plot(doc: Document, path: Path) -> bool:
    """Memory-tier hits (log scale) and Redis hit / miss per contender, side by side."""
    rows = [r for r in doc["rows"] if not r["errors"] or r["memory_hit_ns"] or r["redis_hit_us"]]
    memory = [(r["name"], r["memory_hit_ns"] / 1000) for r in rows if r["memory_hit_ns"]]
    redis = [(r["name"], r["redis_hit_us"], r["miss_us"]) for r in rows if r["redis_hit_us"]]
    if not memory and not redis:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    names = [n for n, _ in memory][::-1]
    values = [v for _, v in memory][::-1]
    colors = ["#1f6feb" if n.startswith("hybridcache") else "#8b949e" for n in names]
    left.barh(names, values, color=colors)
    left.set_xscale("log")
    left.set_xlabel("µs per hit (log scale), lower is better")
    left.set_title("Memory-tier hit (read-through call)")
    for y, v in enumerate(values):
        left.text(v, y, f" {v:,.2f}" if v < 10 else f" {v:,.0f}", va="center", fontsize=8)
    names_r = [n for n, _, _ in redis][::-1]
    ys = range(len(names_r))
    hits = [h for _, h, _ in redis][::-1]
    misses = [m if m is not None else 0 for _, _, m in redis][::-1]
    right.barh([y + 0.2 for y in ys], hits, height=0.4, label="Redis hit (from a 2nd instance)", color="#2da44e")
    right.barh([y - 0.2 for y in ys], misses, height=0.4, label="miss (store included)", color="#d29922")
    right.set_yticks(list(ys), names_r)
    right.set_xlabel("µs per call (median), lower is better")
    right.set_title("Redis hit and miss")
    right.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def hit_rates_plot(doc: Document, path: Path) -> bool:
    """Stacked L1 / L2 hit rate per query kind, steady state, one group per scenario."""
    scenarios = doc.get("scenarios") or []
    if not scenarios:
        return False
    figure, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4.2), sharey=True, squeeze=False)
    for axis, outcome in zip(axes[0], scenarios, strict=True):
        kinds = outcome["results"]["second_half"]
        labels = list(kinds)
        l1 = [kinds[k]["l1_hit_rate"] * 100 for k in labels]
        l2 = [kinds[k]["l2_hit_rate"] * 100 for k in labels]
        axis.bar(labels, l1, label="L1 hit", color="#1f6feb")
        axis.bar(labels, l2, bottom=l1, label="L2 hit", color="#79c0ff")
        for x, kind in enumerate(labels):
            total = kinds[kind]["hit_rate"] * 100
            axis.text(x, l1[x] + l2[x] + 1, f"{total:.1f}%", ha="center", fontsize=9)
        axis.axhline(95, color="#cf222e", linestyle="--", linewidth=1, label="95% (entity target)")
        axis.set_ylim(0, 108)
        axis.set_title(f"{outcome['scenario']['name']} (steady state)")
    axes[0][0].set_ylabel("% of requests")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def memory_plot(doc: Document, path: Path) -> bool:
    """Redis ``MEMORY USAGE`` per entry, plain vs zlib, per value kind."""
    l2 = doc.get("l2") or []
    if not l2:
        return False
    figure, axis = plt.subplots(figsize=(8, 4))
    labels = [r["value"] for r in l2]
    xs = range(len(labels))
    plain = [r["redis_memory_usage_bytes"] / 1024 for r in l2]
    z1 = [r["compression"]["zlib-1"]["redis_memory_usage_bytes"] / 1024 for r in l2]
    axis.bar([x - 0.2 for x in xs], plain, width=0.4, label="as stored (JSON)", color="#8b949e")
    axis.bar([x + 0.2 for x in xs], z1, width=0.4, label="zlib level 1", color="#2da44e")
    axis.set_xticks(list(xs), labels, fontsize=8)
    axis.set_ylabel("KiB per entry in Redis (MEMORY USAGE)")
    axis.set_title("L2 memory per entry")
    axis.legend(fontsize=8)
    return _save(figure, path)


PLOTS: dict[str, tuple[Callable[[Document, Path], bool], str, str]] = {
    "peers": (peers_plot, "peers_latency.png", "hit and miss latency per contender"),
    "hit_rates": (hit_rates_plot, "hit_rates.png", "L1 and L2 hit rate per query kind"),
    "memory": (memory_plot, "memory_l2.png", "Redis memory per entry, plain and zlib"),
}


# ---------------------------------------------------------------------------------------------- acceptance


def acceptance_rows(documents: dict[str, Document]) -> list[list[str]]:
    """One row per target any result file reports (``acceptance``, ``targets`` or ``target`` entries)."""
    rows: list[list[str]] = []
    for name, doc in documents.items():
        for key in ("acceptance", "targets", "target"):
            block = doc.get(key)
            if isinstance(block, dict):
                rows.extend(_target_rows(name, key, block))
        if isinstance(doc.get("meets_target"), bool):
            rows.append([f"{name}: target_ns {doc.get('target_ns')}", fmt(doc["meets_target"]), f"`{name}.json`"])
    return rows


def _target_rows(name: str, key: str, block: Document) -> list[list[str]]:
    def verdict(met: Any) -> str:
        return "**yes**" if met is True else "**no**" if met is False else "-"

    if all(isinstance(v, dict) for v in block.values()):
        return [
            [
                f"{item}: " + ", ".join(f"{k} {fmt(v)}" for k, v in facts.items() if k != "met"),
                verdict(facts.get("met")),
                f"`{name}.json`",
            ]
            for item, facts in block.items()
        ]
    facts = ", ".join(f"{k} {fmt(v)}" for k, v in block.items() if not k.endswith("met"))
    verdicts = [f"{k}: **{fmt(v)}**" for k, v in block.items() if k.endswith("met") and isinstance(v, bool)]
    return [[f"{key}: {facts}", ", ".join(verdicts) or "-", f"`{name}.json`"]]


# ---------------------------------------------------------------------------------------------- assembly


def section(name: str, doc: Document, images: list[str]) -> list[str]:
    out = [f"## {TITLES.get(name, name.replace('_', ' ').capitalize())}", "", *provenance(name, doc)]
    if name == "latency_table":
        out = [LATENCY_MARK, *out]
    if "unreadable" in doc:
        return [*out, f"The file could not be read: {doc['unreadable']}", ""]
    tables = module_tables(name)
    try:
        shown = list(tables(doc)) if tables is not None else generic(doc)
    except Exception as exc:  # fall back to the generic view rather than lose the section
        out += [f"(`bench_{name}.tables` failed: {exc.__class__.__name__}: {exc}; generic view below)", ""]
        shown = generic(doc)
    for table in shown:
        out += [table.markdown(), "", source_line(name), ""]
    if name in PLOTS:
        plot, image, alt = PLOTS[name]
        if plot(doc, IMG_DIR / image):
            images.append(image)
            out += [f"![{alt}](img/{image})", "", source_line(name), ""]
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
    ]
    targets = acceptance_rows(documents)
    if targets:
        lines += [Table(["target and measurement", "met", "source"], list(targets)).markdown(), ""]
    else:
        lines += ["No result file reports a target yet.", ""]
    if "latency_table" not in documents:
        lines += [
            LATENCY_MARK,
            f"## {TITLES['latency_table']}",
            "",
            "Not measured yet: `benchmarks/bench_latency_table.py` writes `benchmarks/results/latency_table.json`.",
            "",
        ]
    for name in [n for n in ORDER if n in documents] + sorted(n for n in documents if n not in ORDER):
        lines += section(name, documents[name], images)
    return "\n".join(lines).rstrip() + "\n", images


# ---------------------------------------------------------------------------------------------- the service page


#: A region of docs/performance-service.md that ``service_page`` rewrites; the prose around it is the page's own.
GENERATED = re.compile(r"(<!-- generated: (\w+) -->)(.*?)(<!-- end -->)", re.DOTALL)


def ms(us: float) -> str:
    return format_ns(us * 1000)


def _note_figures(latency: dict[str, Any] | None) -> dict[str, str]:
    ranges = {"mediator_hits": "microseconds", "http_hits": "about a millisecond", "slept": "not measured"}
    delayed = [
        c
        for c in (latency or {}).get("cells", ())
        if (c["path"], c["operation"], c["cache"]) == ("mediator", "single entity", "none") and c["delay_ms"] > 0
    ]
    if delayed:
        c = max(delayed, key=lambda c: (c["delay_ms"], c["database"] == "postgresql"))
        ranges["slept"] = (
            f"e.g. +{c['delay_ms']:g} ms on {c['database']}: {ms(c['simulated_per_request']['slept_us'])} "
            "slept per single-entity read, on average"
        )
    for path in ("mediator", "http"):
        hits = [c["median_us"] for c in (latency or {}).get("cells", ()) if c["path"] == path and c["cache"] == "l1+l2"]
        if hits:
            ranges[f"{path}_hits"] = f"{ms(min(hits))} to {ms(max(hits))}"
    return ranges


def service_page(documents: dict[str, Document], page: str) -> str:
    """``page`` (docs/performance-service.md) with its generated regions rewritten from ``latency_table.json`` and
    ``service_load.json``; a region with no figure for it keeps its text."""
    parts = _note_figures(documents.get("latency_table"))
    for name in ("latency_table", "service_load"):
        document = documents.get(name)
        if document is None:
            parts[name] = f"*No `benchmarks/results/{name}.json` yet: run `python -m benchmarks {name}`.*"
            continue
        tables = module_tables(name)
        assert tables is not None
        lines = [t.markdown() + "\n" for t in tables(document)] + provenance(name, document)
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
    documents = load_results()
    text, images = build(documents)
    DOC.write_text(text)
    print(f"wrote {DOC} and {len(images)} plots: {', '.join(images) or 'none'}")
    SERVICE_DOC.write_text(service_page(documents, SERVICE_DOC.read_text()))
    print(f"wrote {SERVICE_DOC}")
    if readme_figures.update_readme(documents):
        print(f"updated the measured figures in {readme_figures.README}")


if __name__ == "__main__":
    main()
