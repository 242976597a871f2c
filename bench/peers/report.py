"""Markdown report of a side-by-side run, its files in ``bench/results/``, and the README."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time

README_BEGIN = "<!-- peers-side-by-side:begin -->"
README_END = "<!-- peers-side-by-side:end -->"
README_HEADING = "## Peers side by side"

_TOPO = {
    "1-1": "1 -> 1",
    "2-2": "2 -> 2 (competing consumers)",
    "4-4": "4 -> 4 (competing consumers)",
}


# ----------------------------------------------------------------------------- machine
def _lscpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _dist_version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU model, cores, memory, OS, kernel and the Python stack's versions."""
    return {
        "cpu": _lscpu_model(),
        "cores": os.cpu_count(),
        "mem_gib": _mem_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "numpy": _dist_version("numpy"),
        "numba": _dist_version("numba"),
    }


# ----------------------------------------------------------------------------- formatting
def _num(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def _us(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 1e4:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def _cpu(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "–"
    r = a / b
    if r >= 10:
        return f"{r:.0f}×"
    if r >= 1:
        return f"{r:.1f}×"
    if r >= 0.1:
        return f"{r:.2f}×"
    return f"{r:.2g}×"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


# ----------------------------------------------------------------------------- render
def _order(results: dict) -> list[str]:
    """Peers in the order they were selected (and run)."""
    sel = [k for k in results["settings"]["peers"] if k in results["peers"]]
    return sel + [k for k in results["peers"] if k not in sel]


def _summary(results: dict, fl: dict) -> list[str]:
    """Where fluxon ranks per topology and size, against the best other peer."""
    rows = results["rows"]
    peers = results["peers"]
    s = results["settings"]
    out = []
    lines = []
    for tkey in s["topologies"]:
        for size in s["sizes"]:
            base = fl.get((tkey, size))
            group = [r for r in rows if r["topology"] == tkey and r["size"] == size]
            others = [r for r in group if r["peer"] != "fluxon"]
            if base is None or not others:
                continue
            thr = sorted(group, key=lambda r: -(r["thr"].get("msgs_per_s") or 0))
            lat = sorted(group, key=lambda r: r["lat"].get("p99_us") or float("inf"))
            best_thr = max(others, key=lambda r: r["thr"].get("msgs_per_s") or 0)
            best_lat = min(others, key=lambda r: r["lat"].get("p99_us") or float("inf"))
            rank_thr = thr.index(base) + 1
            rank_lat = lat.index(base) + 1
            loaded = any(_row_load(r) > s["load_threshold_cores"] for r in group)
            lines.append(
                f"| {_TOPO.get(tkey, tkey).split(' (')[0]} | {size} "
                f"| {_num(base['thr'].get('msgs_per_s'))} | {rank_thr} of {len(group)} "
                f"| {peers[best_thr['peer']]['label']} {_num(best_thr['thr'].get('msgs_per_s'))} "
                f"| {_us(base['lat'].get('p99_us'))} | {rank_lat} of {len(group)} "
                f"| {peers[best_lat['peer']]['label']} {_us(best_lat['lat'].get('p99_us'))} "
                f"| {'**⚠**' if loaded else ''} |"
            )
    if lines:
        out.append("#### Summary: where fluxon ranks")
        out.append("")
        out.append(
            "| topology | payload | fluxon msgs/s | rank | best other (msgs/s) "
            "| fluxon p99 µs | rank | best other (p99 µs) | loaded |"
        )
        out.append("|---|---|--:|--:|---|--:|--:|---|---|")
        out.extend(lines)
        out.append("")
    return out


def _row_load(row: dict) -> float:
    return max(row["thr"].get("other_cores", 0.0), row["lat"].get("other_cores", 0.0))


def render(results: dict) -> str:
    """The report body (Markdown, no top-level heading)."""
    s = results["settings"]
    m = results.get("machine", {})
    peers = results["peers"]
    thr_key = "msgs_per_s"
    threshold = s["load_threshold_cores"]
    out: list[str] = []
    mem = f", {m['mem_gib']:.0f} GiB" if m.get("mem_gib") else ""
    out.append(
        f"Measured {results.get('date', '?')} on {m.get('cpu', '?')}, {m.get('cores', '?')} cores"
        f"{mem}, {m.get('os', '?')} (kernel {m.get('kernel', '?')}); "
        f"Python {m.get('python', '?')}, numpy {m.get('numpy', '?')}, numba {m.get('numba', '?')}. "
        f"Command: `{s['command'].strip()}` ({results.get('wall_s', 0) / 60:.1f} min)."
    )
    lb = results.get("load_before", {})
    out.append("")
    out.append(
        f"Machine load from other processes: {lb.get('machine_cores', 0):.2f} cores busy just "
        f"before the run; per row below (**⚠** = more than {threshold:g} cores used by other "
        "processes during that row's timed runs: numbers from a loaded machine)."
    )
    if s.get("wait_quiet_s"):
        waited = results.get("waited_for_quiet_s", 0.0)
        out[-1] += (
            f" Before each timed run the runner waited up to {s['wait_quiet_s']:g} s for other "
            f"processes to drop below that ({waited:.0f} s of waiting in all)."
        )
    out.append("")
    versions = []
    for k in _order(results):
        label, version = peers[k]["label"], peers[k].get("version")
        if version:
            versions.append(label if version in label else f"{label} {version}")
    if versions:
        out.append("Versions: " + "; ".join(versions) + ".")
        out.append("")
    caps = ", ".join(f"{k} {s['capacity'][k]}" for k in s["sizes"])
    batches = ", ".join(f"{k} {s['batch'][k]}" for k in s["sizes"])
    rates = ", ".join(f"{k} {s['latency_rates'][k]}/s" for k in s["sizes"])
    malloc = " ".join(f"`{k}={v}`" for k, v in s["malloc_env"].items()) or "none"
    out.append(
        'Workload: message `{"seq": int, "t": monotonic_ns, "payload": bytes}`; one '
        f"process per producer and consumer; max-throughput runs of {s['duration_s']:g} s "
        f"into a queue bounded to the same capacity for every peer ({caps} messages); "
        f"fixed-rate latency runs of {s['latency_duration_s']:g} s at {rates} (all producers "
        "together; a peer that cannot sustain it runs at half its measured throughput, shown "
        f"in the rate column); batch B for peers with a batch API: {batches}. malloc "
        f"settings for every process of every peer: {malloc}."
    )
    out.append("")
    out.append(
        "Columns: **msgs/s**, **MB/s** (payload bytes, 10^6) of the max-throughput run; "
        "**fl/peer** = fluxon msgs/s ÷ peer msgs/s (above 1: fluxon moves more); "
        "**p50/p99/p99.9** one-way latency in µs of the fixed-rate run, **fl/peer p99** = "
        "fluxon p99 ÷ peer p99 (below 1: fluxon is faster); **rate** = messages/s of the "
        "latency run (samples); **CPU µs/msg** = CPU time per message of the producers / "
        "consumers / the peer's always-on service processes during the throughput run; "
        "**lost** = sent − received (both runs; a peer that reports a send reached nobody "
        "counts it here too); **load** = cores used by other processes."
    )
    out.append("")

    rows = results["rows"]
    fl = {(r["topology"], r["size"]): r for r in rows if r["peer"] == "fluxon"}
    out.extend(_summary(results, fl))
    for tkey in s["topologies"]:
        trows = [r for r in rows if r["topology"] == tkey]
        if not trows:
            continue
        out.append(f"#### {_TOPO.get(tkey, tkey)}")
        out.append("")
        out.append(
            "| payload | peer | msgs/s | MB/s | fl/peer | p50 | p99 | p99.9 | fl/peer p99 "
            "| rate (n) | CPU µs/msg prod / cons / svc | lost | load |"
        )
        out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for size in s["sizes"]:
            for r in sorted(
                (r for r in trows if r["size"] == size),
                key=lambda r: _order(results).index(r["peer"]),
            ):
                t, lat = r["thr"], r["lat"]
                base = fl.get((tkey, size))
                ratio_thr = _ratio(base["thr"].get(thr_key), t.get(thr_key)) if base else "–"
                ratio_p99 = _ratio(base["lat"].get("p99_us"), lat.get("p99_us")) if base else "–"
                rate = f"{lat.get('rate', 0)}"
                if lat.get("rate", 0) < r.get("target_rate", 0):
                    rate += "†"
                rate += f" ({lat.get('n', 0)})"
                svc = t.get("svc_cpu_us_per_msg") if t.get("svc_cpu_s") else None
                cpu = (
                    f"{_cpu(t.get('prod_cpu_us_per_msg'))} / {_cpu(t.get('cons_cpu_us_per_msg'))}"
                    f" / {_cpu(svc) if svc is not None else '–'}"
                )
                lost = t["lost"] + lat["lost"]
                extra = []
                late = t["late"] + lat["late"]
                if late:
                    extra.append(f"{late} late")
                reorder = t["reorder"] + lat["reorder"]
                if reorder:
                    extra.append(f"{reorder} reordered")
                lost_txt = f"{lost}" + (f" ({', '.join(extra)})" if extra else "")
                if lost:
                    lost_txt = f"**{lost_txt}**"
                load = _row_load(r)
                load_txt = f"{load:.2f}" + (" **⚠**" if load > threshold else "")
                label = peers[r["peer"]]["label"]
                if r["peer"] == "fluxon":
                    label = f"**{label}**"
                out.append(
                    f"| {size} | {label} | {_num(t.get(thr_key))} | {_num(t.get('mb_per_s'))} "
                    f"| {ratio_thr} | {_us(lat.get('p50_us'))} | {_us(lat.get('p99_us'))} "
                    f"| {_us(lat.get('p999_us'))} | {ratio_p99} | {rate} | {cpu} | {lost_txt} "
                    f"| {load_txt} |"
                )
        out.append("")
    if any(r["lat"].get("rate", 0) < r.get("target_rate", 0) for r in rows):
        out.append(
            "† the peer could not sustain the target rate (its max throughput was below twice "
            "the target), so its latency run used half its measured throughput."
        )
        out.append("")

    out.append("#### Peers: batching, topology, idle CPU")
    out.append("")
    out.append(
        "| peer | native batching | n -> n | always-on processes idle | idle clients attached "
        "(% of a core, all together) |"
    )
    out.append("|---|---|---|--:|--:|")
    idle = results.get("idle", {})
    for key in _order(results):
        info = peers[key]
        ii = idle.get(key, {})
        svc = ii.get("services_only")
        svc_txt = f"{_pct(svc['cores'])} ({svc['processes']} processes)" if svc else "none"
        if svc and svc.get("per_process"):
            parts = ", ".join(f"{name} {v * 100:.2f}%" for name, v in svc["per_process"].items())
            svc_txt += f": {parts}"
        att = ii.get("attached")
        att_txt = f"{_pct(att['clients_cores'])} ({att['clients']} clients)" if att else "–"
        topo = "partitioned (pairs)" if info.get("partitioned") else "competing consumers"
        out.append(f"| {info['label']} | {info['batching']} | {topo} | {svc_txt} | {att_txt} |")
    out.append("")
    st = results.get("settings", {})
    if "idle_duration_s" in st:
        out.append(
            f"Idle windows: {st['idle_duration_s']:g} s, after {st.get('idle_settle_s', 0):g} s "
            "without traffic (the clients' window: attached after the warm-up of the first "
            "topology)."
        )
        out.append("")
    notes = [(peers[k]["label"], n) for k in _order(results) for n in peers[k].get("notes", [])]
    if notes:
        out.append("How each peer is driven (settings and caveats of this run):")
        out.append("")
        for label, n in notes:
            out.append(f"- {label}: {n}")
        out.append("")
    out.append("#### Not run")
    out.append("")
    if results.get("not_run"):
        for nr in results["not_run"]:
            label = peers.get(nr["peer"], {}).get("label", nr["peer"])
            why = re.sub(r"\s+", " ", nr["why"]).strip()
            if len(why) > 600:
                why = why[:600] + " …"
            out.append(f"- {label}, {nr['what']}: {why}")
    else:
        out.append("- nothing: every selected peer, topology and size ran.")
    out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- files
def write_results(results: dict, body: str, results_dir: str) -> dict:
    """Write ``peers-<UTC stamp>.md`` and ``.json``; return their paths."""
    os.makedirs(results_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    md_path = os.path.join(results_dir, f"peers-{stamp}.md")
    json_path = os.path.join(results_dir, f"peers-{stamp}.json")
    write_report(results, body, md_path)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    return {"md": md_path, "json": json_path}


def write_report(results: dict, body: str, md_path: str) -> None:
    """Write the Markdown report file."""
    with open(md_path, "w") as f:
        f.write(f"# Peers side by side — {results.get('date', '')}\n\n{body}\n")


def readme_section(body: str, results_link: str) -> str:
    """The README section: how to run, then the latest report."""
    return "\n".join(
        [
            README_BEGIN,
            README_HEADING,
            "",
            "`make bench-peers` (or `python -m bench.peers`, `--quick` for a few minutes, "
            "`--peers/--sizes/--topologies` to filter) runs the same workload on fluxon and "
            "on the queues users would otherwise pick — `multiprocessing.Queue` and `Pipe`, "
            "POSIX message queues (`posix_ipc`), `faster-fifo`, ZeroMQ PUSH/PULL over ipc, "
            "iceoryx2 publish/subscribe — and on the published reference `fluxon-py` 0.2.4 "
            "(installed into its own `.venv-ref`, with its etcd, master and owner started by "
            "the runner), in one invocation. Each run writes a report and the raw numbers to "
            "`bench/results/` and replaces this section with the latest report. Every timed "
            "window is bounded, every process and shared-memory object the run created is "
            "removed at the end (also on failure), and what could not run is listed with "
            "the reason.",
            "",
            f"Latest run ([{os.path.basename(results_link)}]({results_link})):",
            "",
            body.rstrip(),
            README_END,
            "",
        ]
    )


def update_readme(path: str, body: str, results_link: str) -> None:
    """Replace (or add) the "Peers side by side" section of ``path``, keeping the rest."""
    section = readme_section(body, results_link)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n\n"
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
        text = head + section.rstrip("\n") + tail
        if not text.endswith("\n"):
            text += "\n"
    elif README_HEADING in text:
        start = text.index(README_HEADING)
        nxt = text.find("\n## ", start + len(README_HEADING))
        tail = text[nxt + 1 :] if nxt >= 0 else ""
        text = text[:start] + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
