"""Build ``docs/performance.md`` and its plots (``docs/img/*.png``) from ``benchmarks/results/*.json``.

Run: ``.venv/bin/python -m benchmarks.make_report`` after the benchmarks (``make bench``). Nothing is measured
here: every figure in the page is read from a result file, and each table names its file; each section also
gives the command that produced the file and the machine it ran on.

Layout: the issue's targets first, then one section per result file. ``peers``, ``hit_rates`` and ``memory``
have their own layouts and plots (below). Any other file is shown by the module that wrote it if
``benchmarks/bench_<name>.py`` defines ``markdown(document) -> str`` (or ``markdown_table``), else by a generic
renderer that turns nested dicts and lists into tables. Unknown files therefore appear without changes here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from benchmarks import readme_figures

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"
IMG_DIR = ROOT / "docs" / "img"
# Sections in this order; any other result file follows, alphabetically.
ORDER = ("latency_table", "peers", "hit_rates", "memory", "service_load")
LATENCY_MARK = "<!-- section: latency_table — owned by benchmarks/bench_latency_table.py (mediator and HTTP) -->"

Document = dict[str, Any]


def tracked_files(directory: Path) -> set[Path] | None:
    """The files under ``directory`` that git tracks (None when git cannot say)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "ls-files", "--full-name", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {(ROOT / line).resolve() for line in out.stdout.splitlines() if line}


def load_results(directory: Path, *, tracked_only: bool = False) -> dict[str, Document]:
    """Every ``*.json`` in ``directory`` by file stem (a file that does not parse is reported, not skipped).

    ``tracked_only`` keeps only files committed to git, so a page meant for the repository cites no result
    that exists only in someone's working tree.
    """
    allowed = tracked_files(directory) if tracked_only else None
    documents: dict[str, Document] = {}
    for path in sorted(directory.glob("*.json")):
        if allowed is not None and path.resolve() not in allowed:
            continue
        try:
            documents[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            documents[path.stem] = {"unreadable": f"{exc.__class__.__name__}: {exc}"}
    return documents


def provenance(name: str, doc: Document) -> list[str]:
    """Where a section's figures come from: file, command, time, machine."""
    machine = doc.get("machine") or doc.get("environment") or {}
    facts = []
    for key in ("cpu", "cpus", "load_average", "python", "redis_server", "git_commit"):
        if key in machine:
            value = machine[key]
            facts.append(f"{key.replace('_', ' ')}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
    packages = machine.get("packages")
    if isinstance(packages, dict):
        facts.append("packages: " + ", ".join(f"{k} {v}" for k, v in packages.items()))
    if "peer_versions" in doc:
        facts.append("peers: " + ", ".join(f"{k} {v}" for k, v in doc["peer_versions"].items()))
    lines = [f"*File:* `benchmarks/results/{name}.json`"]
    if "command" in doc:
        lines.append(
            f"*Command:* `{doc['command']}`"
            + (f" — *generated* {doc['generated_at']}" if "generated_at" in doc else "")
        )
    if facts:
        lines.append("*Machine:* " + "; ".join(facts))
    return ["  \n".join(lines), ""]


# ---------------------------------------------------------------------------------------------- rendering helpers

META_KEYS = {"benchmark", "command", "generated_at", "machine", "environment", "peer_versions"}
# Bulky internals that help whoever tunes the code but not a reader of this page (they stay in the JSON).
OMITTED_KEYS = {"diagnostics", "samples", "top_by_own_time", "memory_hit_batches"}
MAX_COLUMNS = 16
MAX_ROWS = 60


def cell(value: Any, digits: int | None = None) -> str:
    """A value as a table cell: thousands separators, floats to ``digits`` decimals (or 3 significant)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if digits is not None:
            return f"{value:,.{digits}f}"
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(cell(v) for v in value)
    text = str(value) if not isinstance(value, dict | list) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table, the first column left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def source_line(name: str) -> str:
    return f"<sub>Source: `benchmarks/results/{name}.json`</sub>"


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key in OMITTED_KEYS:
            continue
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _records_table(name: str, records: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Records (dicts, nested ones flattened to dotted columns) as one table; extra columns and rows are named
    as left in the JSON rather than dropped silently."""
    flats = [(label, _flatten(r)) for label, r in records]
    columns: list[str] = []
    for _, flat in flats:
        columns += [c for c in flat if c not in columns]
    shown_columns = columns[:MAX_COLUMNS]
    rows = [[label, *(cell(flat.get(c)) for c in shown_columns)] for label, flat in flats[:MAX_ROWS]]
    out = md_table(["", *shown_columns], rows)
    if len(columns) > MAX_COLUMNS:
        out += ["", f"(More columns in the JSON: {', '.join(columns[MAX_COLUMNS:])}.)"]
    if len(flats) > MAX_ROWS:
        out += ["", f"({len(flats) - MAX_ROWS} more rows in the JSON.)"]
    return [*out, "", source_line(name), ""]


def generic(name: str, doc: Document, depth: int = 0, title: str | None = None) -> list[str]:
    """Any JSON document as Markdown: scalars as a key/value table, uniform records as tables, the rest nested."""
    out: list[str] = []
    if title is not None:
        out += [f"{'#' * min(6, 3 + depth)} {title}" if depth < 3 else f"**{title}**", ""]
    scalars = [[k, cell(v)] for k, v in doc.items() if k not in META_KEYS and not isinstance(v, dict | list)]
    scalars += [
        [k, cell(v)] for k, v in doc.items() if isinstance(v, list) and all(not isinstance(x, dict | list) for x in v)
    ]
    if scalars:
        out += [*md_table(["", "value"], scalars), "", source_line(name), ""]
    omitted = [k for k in doc if k in OMITTED_KEYS]
    for key, value in doc.items():
        if key in META_KEYS or key in OMITTED_KEYS:
            continue
        if isinstance(value, dict) and value:
            if all(isinstance(v, dict) for v in value.values()):
                out += [f"**{key}**", "", *_records_table(name, list(value.items()))]
            else:
                out += generic(name, value, depth + 1, key)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out += [f"**{key}**", "", *_records_table(name, [(str(i + 1), v) for i, v in enumerate(value)])]
    if omitted:
        out += [f"(Not shown here: {', '.join(omitted)} — see the JSON.)", ""]
    return out


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
            rows.append([f"{name}: target_ns {doc.get('target_ns')}", cell(doc["meets_target"]), f"`{name}.json`"])
    return rows


def _target_rows(name: str, key: str, block: Document) -> list[list[str]]:
    if all(isinstance(v, dict) for v in block.values()):
        out = []
        for item, verdict in block.items():
            facts = ", ".join(f"{k} {cell(v)}" for k, v in verdict.items() if k != "met")
            met = verdict.get("met")
            out.append(
                [f"{item}: {facts}", "**yes**" if met is True else "**no**" if met is False else "-", f"`{name}.json`"]
            )
        return out
    facts = ", ".join(f"{k} {cell(v)}" for k, v in block.items() if not k.endswith("met"))
    verdicts = [f"{k}: **{cell(v)}**" for k, v in block.items() if k.endswith("met") and isinstance(v, bool)]
    return [[f"{key}: {facts}", ", ".join(verdicts) or "-", f"`{name}.json`"]]


# ---------------------------------------------------------------------------------------------- peers


def render_peers(doc: Document, images: list[str]) -> list[str]:
    rows = doc["rows"]
    by_name = {r["name"]: r for r in rows}
    l1 = (by_name.get("hybridcache L1+L2") or {}).get("memory_hit_ns")
    l2 = (by_name.get("hybridcache L2-only") or {}).get("redis_hit_us")
    miss = (by_name.get("hybridcache L2-only") or {}).get("miss_us")

    def ratio(value: float | None, reference: float | None) -> str:
        return "-" if value is None or not reference else f"{value / reference:.1f}x"

    latency = [
        [
            r["name"],
            cell(r["memory_hit_ns"], 0),
            ratio(r["memory_hit_ns"], l1),
            cell(r["memory_get_ns"], 0),
            cell(r["redis_hit_us"], 1),
            cell(r["redis_hit_p99_us"], 0),
            ratio(r["redis_hit_us"], l2),
            cell(r["miss_us"], 1),
            ratio(r["miss_us"], miss),
        ]
        for r in rows
    ]
    out = [
        "Memory-tier hit: median ns per call over round-robin batches (read-through call on one warm key; `get()` "
        "is the plain lookup). Redis hit: a second instance reads keys the first one stored, each once, µs per "
        "call (for a contender with a local tier this includes the promotion into it). Miss: a fresh key, an "
        "instant factory, the store included. Ratios: memory hits against hybridcache L1+L2, Redis hits and "
        "misses against hybridcache L2-only; above 1.0x is slower than hybridcache.",
        "",
        *md_table(
            [
                "contender",
                "mem hit ns",
                "vs hc",
                "get() ns",
                "Redis hit µs",
                "p99 µs",
                "vs hc L2",
                "miss µs",
                "vs hc L2",
            ],
            latency,
        ),
        "",
        source_line("peers"),
        "",
    ]
    if peers_plot(doc, IMG_DIR / "peers_latency.png"):
        images.append("peers_latency.png")
        out += ["![hit and miss latency per contender](img/peers_latency.png)", "", source_line("peers"), ""]
    params = doc.get("parameters", {})
    stampede = []
    for r in rows:
        for label, s in r["stampede"].items():
            logged = ", ".join(f"{k}: {v}" for k, v in (s.get("library_log_records") or {}).items())
            stampede.append(
                [
                    r["name"] + (f" ({label})" if label else ""),
                    cell(s.get("factory_runs", s.get("error"))),
                    cell(s.get("wall_ms"), 0),
                    cell(s.get("failed_calls")),
                    cell(s.get("first_failure")),
                    logged or "-",
                ]
            )
    out += [
        f"**Stampede**: {params.get('stampede_callers')} concurrent cold calls to one key, the factory takes "
        f"{cell((params.get('stampede_factory_seconds') or 0) * 1000, 0)} ms.",
        "",
        *md_table(["contender", "factory runs", "wall ms", "failed calls", "first failure", "logged"], stampede),
        "",
        source_line("peers"),
        "",
    ]
    propagation = []
    for r in rows:
        p = r["propagation"]
        if isinstance(p, dict):
            propagation.append(
                [
                    r["name"],
                    cell(p.get("trials")),
                    cell(p.get("p50_us"), 0),
                    cell(p.get("p99_us"), 0),
                    cell(p.get("remove_call_p50_us"), 0),
                    cell(p.get("not_observed")) + (f" — {p['note']}" if p.get("note") else ""),
                ]
            )
        elif isinstance(p, str):
            propagation.append([r["name"], "-", "-", "-", "-", p])
    deadline = params.get("propagation_deadline_seconds")
    out += [
        "**Invalidation propagation**: instances A and B both hold a key in their local tier; A removes it; "
        "the time from the start of A's remove call until B no longer returns the value (B polls, yielding to "
        f"the event loop between polls; both run in one process; deadline {deadline} s).",
        "",
        *md_table(["contender", "trials", "p50 µs", "p99 µs", "A's remove call p50 µs", "not observed"], propagation),
        "",
        source_line("peers"),
        "",
    ]
    errors = [[r["name"], "; ".join(r["errors"])] for r in rows if r["errors"]]
    if errors:
        out += [
            "Contenders that failed to start:",
            "",
            *md_table(["contender", "error"], errors),
            "",
            source_line("peers"),
            "",
        ]
    logs = doc.get("library_log_records") or {}
    if logs:
        out += [
            "Warnings and errors the libraries logged during the run:",
            "",
            *md_table(
                ["logger", "count", "first message"],
                [[k, cell(v["count"]), v["first_message"]] for k, v in logs.items()],
            ),
            "",
            source_line("peers"),
            "",
        ]
    return out


# ---------------------------------------------------------------------------------------------- hit rates


def render_hit_rates(doc: Document, images: list[str]) -> list[str]:
    out = []
    settings = ", ".join(f"{k} {v}" for k, v in doc.get("settings", {}).items())
    out += [f"Settings: {settings}.", ""]
    for outcome in doc["scenarios"]:
        s = outcome["scenario"]
        mix = ", ".join(f"{k} {v:.0%}" for k, v in s["mix"].items())
        out += [
            f"**{s['name']}** — {s['requests']:,} requests ({mix} of reads; {s['write_ratio']:.1%} writes, "
            f"{outcome['writes']:,} in all) over {s['instances']} instances, {s['rate_per_second']:g} requests/s "
            f"simulated ({s['simulated_seconds']:,.0f} s), Zipf alpha {s['zipf_alpha']}, {s['entities']:,} ids, "
            f"{s['search_terms']} search terms, {s['list_pages']} list pages.",
            "",
        ]
        rows = []
        for window, kinds in outcome["results"].items():
            for kind, r in kinds.items():
                rows.append(
                    [
                        kind,
                        "second half (steady state)" if window == "second_half" else "whole run (cold start included)",
                        f"{r['requests']:,}",
                        f"{r['l1_hit_rate']:.1%}",
                        f"{r['l2_hit_rate']:.1%}",
                        f"**{r['hit_rate']:.1%}**",
                        f"{r['db_queries_per_1000']:.1f}",
                        cell(r["stale_reads"]),
                    ]
                )
        out += [
            *md_table(
                ["query", "window", "requests", "L1 hit", "L2 hit", "hit", "DB queries / 1,000", "stale reads"], rows
            ),
            "",
            source_line("hit_rates"),
            "",
        ]
    out += _seed_claims_table(doc.get("seed_claims"))
    if hit_rates_plot(doc, IMG_DIR / "hit_rates.png"):
        images.append("hit_rates.png")
        out += ["![L1 and L2 hit rate per query kind](img/hit_rates.png)", "", source_line("hit_rates"), ""]
    return out


def _seed_claims_table(claims: dict[str, Any] | None) -> list[str]:
    """The seed's claimed hit rates beside ours (steady state), and why searches and lists fall short with writes."""
    if not claims:
        return []
    names = list(claims["steady_state"])
    rows = [
        [kind, f"{low:.0%}-{high:.0%}", *(f"**{claims['steady_state'][name][kind]:.1%}**" for name in names)]
        for kind, (low, high) in claims["claimed"].items()
    ]
    gaps = ", ".join(
        f"{seconds:g} s in {name}" for name, seconds in claims["seconds_between_writes"].items() if seconds is not None
    )
    return [
        "**The seed's claims beside ours** (steady state, per scenario):",
        "",
        *md_table(["query", "seed claims", *names], rows),
        "",
        "Every write invalidates one entity but *every* cached search and list page (the seed's "
        "`UpdateDealershipCommand` invalidates the prefixes `Dealership:Search` and `Dealership:List`), so search "
        f"and list hit rates are bounded by the mean time between writes ({gaps}), not by the cache. The "
        "scenario without writes shows the ceiling left by the TTLs, the L1 size and the cold start.",
        "",
        source_line("hit_rates"),
        "",
    ]


# ---------------------------------------------------------------------------------------------- memory


def render_memory(doc: Document, images: list[str]) -> list[str]:
    l1 = doc["l1"]
    out = [
        *md_table(
            ["L1, per entry (tracemalloc)", "bytes"],
            [
                ["DTO + L1Entry + key + dict slot", cell(l1["bytes_per_entry"])],
                ["of which the DealershipDto (with zip code and state)", cell(l1["dto_bytes"])],
                ["of which the cache (entry, stamp, key, slot)", cell(l1["cache_overhead_bytes"])],
                [f"{1024} entries (the seed's SizeLimit), MiB", cell(l1["seed_size_limit_total_mib"])],
                ["measured over entries", cell(l1["entries"])],
            ],
        ),
        "",
        f"The seed's figure for comparison: {l1['seed_claim']}.",
        "",
        source_line("memory"),
        "",
    ]
    rows = []
    for r in doc["l2"]:
        z1, z6 = r["compression"]["zlib-1"], r["compression"]["zlib-6"]
        rows.append(
            [
                r["value"],
                cell(r["payload_bytes"]),
                cell(r["header_bytes"]),
                cell(r["redis_memory_usage_bytes"]),
                f"{cell(z1['payload_bytes'])} / {cell(z1['redis_memory_usage_bytes'])}",
                f"{cell(z6['payload_bytes'])} / {cell(z6['redis_memory_usage_bytes'])}",
                f"{cell(z1['compress_us'], 1)} / {cell(z1['decompress_us'], 1)}",
                cell(r["json_decode_us"], 1),
            ]
        )
    out += [
        "L2: payload = envelope header + JSON body as stored; `MEMORY USAGE` as Redis reports it for the key "
        "(median over the sample). Compression columns: payload bytes / `MEMORY USAGE` bytes of the same payload "
        "compressed; zlib-1 µs to compress / decompress, against the µs the typed JSON decode takes anyway.",
        "",
        *md_table(
            [
                "value",
                "payload B",
                "header B",
                "MEMORY USAGE B",
                "zlib-1 B / MU",
                "zlib-6 B / MU",
                "zlib-1 µs c / d",
                "decode µs",
            ],
            rows,
        ),
        "",
        "Compression verdict (rule in `bench_memory.verdict`: it pays when zlib-1 halves Redis memory per entry, "
        f"is marginal from a fifth to a half, does not pay below): {doc['compression_verdict']}.",
        "",
        "The option: `CompressionThresholdBytes` (off by default) stores bodies of at least that many bytes "
        "zlib-1-compressed when that makes them smaller; every instance reads both forms. Memory for CPU: set it "
        "to about 1024 when searches and lists fill Redis, and leave single entities (a few hundred bytes) plain.",
        "",
        source_line("memory"),
        "",
    ]
    if memory_plot(doc, IMG_DIR / "memory_l2.png"):
        images.append("memory_l2.png")
        out += ["![Redis memory per entry, plain and zlib](img/memory_l2.png)", "", source_line("memory"), ""]
    return out


# ---------------------------------------------------------------------------------------------- assembly

TITLES = {
    "latency_table": "The seed's latency table: mediator and HTTP",
    "peers": "hybridcache next to cashews and aiocache (same workload, same run)",
    "hit_rates": "Hit rates under a Zipf workload with the seed's settings",
    "memory": "Memory per entry: L1 and L2, and whether compression would pay",
}
RENDERERS: dict[str, Callable[[Document, list[str]], list[str]]] = {
    "peers": render_peers,
    "hit_rates": render_hit_rates,
    "memory": render_memory,
}


def _module_markdown(name: str) -> Callable[[Document], str] | None:
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
    except Exception:  # a result file without (or with a broken) script is still shown, generically
        return None
    for attr in ("markdown", "markdown_table"):
        fn = getattr(module, attr, None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    return None


def section(name: str, doc: Document, images: list[str]) -> list[str]:
    out = [f"## {TITLES.get(name, name.replace('_', ' ').capitalize())}", ""]
    if name == "latency_table":
        out = [LATENCY_MARK, *out]
    out += provenance(name, doc)
    if "unreadable" in doc:
        return [*out, f"The file could not be read: {doc['unreadable']}", ""]
    renderer = RENDERERS.get(name)
    if renderer is not None:
        return out + renderer(doc, images)
    custom = _module_markdown(name)
    if custom is not None:
        try:
            return [*out, custom(doc), "", source_line(name), ""]
        except Exception as exc:  # fall back to the generic view rather than lose the section
            out += [f"(`bench_{name}.markdown` failed: {exc.__class__.__name__}: {exc}; generic view below)", ""]
    return out + generic(name, doc)


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
    lines += (
        [*md_table(["target and measurement", "met", "source"], targets), ""]
        if targets
        else ["No result file reports a target yet.", ""]
    )
    names = [n for n in ORDER if n in documents] + sorted(n for n in documents if n not in ORDER)
    if "latency_table" not in documents:
        lines += [
            LATENCY_MARK,
            f"## {TITLES['latency_table']}",
            "",
            "Not measured yet: `benchmarks/bench_latency_table.py` writes `benchmarks/results/latency_table.json` "
            "(single entity, search, list; no cache / L2 only / L1+L2; through the mediator and HTTP; SQLite and "
            "PostgreSQL; simulated database round trips). This section fills in when that file exists.",
            "",
        ]
    for name in names:
        lines += section(name, documents[name], images)
    return "\n".join(lines).rstrip() + "\n", images


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="directory of result JSON files")
    parser.add_argument("--output", type=Path, default=DOC, help="the Markdown page to write")
    parser.add_argument("--tracked", action="store_true", help="only result files committed to git")
    args = parser.parse_args(argv)
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    text, images = build(load_results(args.results, tracked_only=args.tracked))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} and {len(images)} plots: {', '.join(images) or 'none'}")
    if args.output == DOC and readme_figures.update_readme(readme_figures.load(args.results)):
        print(f"updated the measured figures in {readme_figures.README}")


if __name__ == "__main__":
    main()
