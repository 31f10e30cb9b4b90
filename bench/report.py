"""Turns a benchmark report (bench/run.py) into the results table of bench/README.md and
an SVG plot beside the JSON."""
import html
import pathlib

START, END = "<!-- results -->", "<!-- /results -->"

# figure: (label, unit, better, target kind)
#   better: "high" or "low"; target: ("peer", factor) = within factor of the best peer,
#   ("abs", limit) = an absolute limit, ("peer-haproxy", 1.0) = at most HAProxy's.
FIGURES = [
    ("msg_per_s_64B", "64 B echo, 50 conns", "msg/s", "high", ("peer", 1.0)),
    ("p99_ms_64B", "64 B echo p99", "ms", "low", ("peer", 1.0)),
    ("p999_ms_64B", "64 B echo p99.9", "ms", "low", None),
    ("mb_per_s_16KiB", "16 KiB echo, 50 conns", "MB/s", "high", ("peer", 1.0)),
    ("p99_ms_16KiB", "16 KiB echo p99", "ms", "low", ("peer", 1.0)),
    ("cpu_us_per_msg_64B", "server CPU per 64 B message relayed", "µs", "low", ("peer", 0.8)),
    ("cpu_user_us_per_msg_64B", "… of which user space", "µs", "low", None),
    ("cpu_sys_us_per_msg_64B", "… of which kernel", "µs", "low", None),
    ("cpu_ms_per_mb_16KiB", "server CPU per MB relayed (16 KiB msgs)", "ms", "low", ("peer", 0.8)),
    ("conn_per_s_full", "new connections/s, full handshake", "conn/s", "high", None),
    ("p99_ms_conn_full", "new connection p99, full handshake", "ms", "low", None),
    ("cpu_us_per_conn_full", "server CPU per new connection, full TLS 1.3 + upgrade", "µs", "low", ("peer", 0.8)),
    ("conn_per_s_resumed", "new connections/s, resumed", "conn/s", "high", None),
    ("p99_ms_conn_resumed", "new connection p99, resumed", "ms", "low", None),
    ("cpu_us_per_conn_resumed", "server CPU per new connection, resumed", "µs", "low", ("peer", 0.8)),
    ("msg_per_s_h2_64B", "64 B echo over HTTP/2 (RFC 8441), 50 WebSockets on 5 conns", "msg/s", "high", ("peer", 1.0)),
    ("p99_ms_h2_64B", "64 B echo over HTTP/2 p99", "ms", "low", None),
    ("cpu_us_per_msg_h2_64B", "server CPU per 64 B message relayed over HTTP/2", "µs", "low", ("peer", 0.8)),
    ("req_per_s_http1", "HTTP/1.1 keep-alive GET of 1 KiB, 50 conns", "req/s", "high", ("peer", 1.0)),
    ("mean_ms_http1", "HTTP/1.1 GET mean time", "ms", "low", None),
    ("cpu_us_per_req_http1", "server CPU per HTTP/1.1 request", "µs", "low", ("peer", 0.8)),
    ("req_per_s_http2", "HTTP/2 GET of 1 KiB, 5 conns × 10 streams", "req/s", "high", ("peer", 1.0)),
    ("mean_ms_http2", "HTTP/2 GET mean time", "ms", "low", None),
    ("cpu_us_per_req_http2", "server CPU per HTTP/2 request", "µs", "low", ("peer", 0.8)),
    ("kib_per_idle_conn", "RSS per idle connection (both sockets)", "KiB", "low", ("peer-haproxy", 1.0)),
    ("swap_p50_ms", "certificate swap visible, p50", "ms", "low", None),
    ("swap_p99_ms", "certificate swap visible, p99", "ms", "low", ("abs", 25.0)),
    ("swap_max_ms", "certificate swap visible, max", "ms", "low", None),
    ("swap_dropped", "live connections dropped by 50 swaps", "", "low", ("abs", 0.0)),
    ("startup_ms", "start-up to first handshake", "ms", "low", ("abs", 50.0)),
]


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(stat):
    if not stat:
        return "–"
    if stat["min"] == stat["max"]:
        return fmt(stat["median"])
    return f"{fmt(stat['median'])} <sub>({fmt(stat['min'])}–{fmt(stat['max'])})</sub>"


# Not peers: the ACME figures, and wssd built from an earlier commit (--baseline).
NOT_PEERS = ("wssd", "acme", "wssd-base", "fleet")

# The WebSocket figures a change must not make worse (--baseline): by more than 5 %.
BASELINE_FIGURES = ["msg_per_s_64B", "p99_ms_64B", "mb_per_s_16KiB", "p99_ms_16KiB", "cpu_us_per_msg_64B",
                    "cpu_ms_per_mb_16KiB", "conn_per_s_full", "cpu_us_per_conn_full", "conn_per_s_resumed",
                    "cpu_us_per_conn_resumed", "kib_per_idle_conn", "swap_p99_ms", "startup_ms"]
BASELINE_SLACK = 0.05


def verdict(summary, key, better, target):
    wssd = (summary.get("wssd", {}).get(key) or {}).get("median")
    if wssd is None or target is None:
        return "", ""
    peers = [(s, (summary[s].get(key) or {}).get("median")) for s in summary if s not in NOT_PEERS]
    peers = [(s, v) for s, v in peers if v is not None]
    kind, factor = target
    if kind == "abs":
        ok = wssd <= factor
        return f"≤ {fmt(factor)}", "yes" if ok else "**no**"
    if kind == "peer-haproxy":
        peers = [(s, v) for s, v in peers if s == "haproxy"]
    if not peers:
        return "", ""
    best = max(peers, key=lambda p: p[1]) if better == "high" else min(peers, key=lambda p: p[1])
    ratio = wssd / best[1] if best[1] else float("inf")
    if better == "high":
        ok = ratio >= factor
        goal = f"≥ {factor:g}× {best[0]}"
    else:
        ok = ratio <= factor
        goal = f"≤ {factor:g}× {best[0]}"
    return f"{goal} ({ratio:.2f}×)", "yes" if ok else "**no**"


def baseline_table(report):
    """wssd against wssd built from the baseline commit, same run: each WebSocket
    figure's ratio, and whether it is within 5 % (or better)."""
    summary = report["summary"]
    if "wssd-base" not in summary:
        return []
    rev = report["settings"].get("baseline", "?")
    lines = ["", f"| WebSocket figure, wssd against its baseline `{rev}` (same run) | wssd | wssd-base | ratio | target | met |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    rows = {key: (label, unit, better) for key, label, unit, better, _ in FIGURES}
    for key in BASELINE_FIGURES:
        label, unit, better = rows[key]
        now, base = (summary["wssd"].get(key) or {}).get("median"), (summary["wssd-base"].get(key) or {}).get("median")
        name = f"{label} ({unit})" if unit else label
        if now is None or not base:
            lines.append(f"| {name} | {cell(summary['wssd'].get(key))} | {cell(summary['wssd-base'].get(key))} | – | | |")
            continue
        ratio = now / base
        ok = ratio >= 1 - BASELINE_SLACK if better == "high" else ratio <= 1 + BASELINE_SLACK
        goal = f"≥ {1 - BASELINE_SLACK:g}×" if better == "high" else f"≤ {1 + BASELINE_SLACK:g}×"
        lines.append(f"| {name} | {cell(summary['wssd'].get(key))} | {cell(summary['wssd-base'].get(key))} | "
                     f"{ratio:.2f}× | {goal} | {'yes' if ok else '**no**'} |")
    return lines


def table(report):
    summary = report["summary"]
    servers = [s for s in summary if s not in ("acme", "wssd-base", "fleet")]
    lines = [
        f"Run of {report['date']}, commit `{report['commit']}`, {report['machine']}; "
        f"{report['threads']} worker threads/processes per server; "
        f"{report['settings']['repeat']} runs, median (min–max).",
        "",
        "| figure | " + " | ".join(servers) + " | target | met |",
        "| --- | " + " | ".join("---:" for _ in servers) + " | --- | --- |",
    ]
    for key, label, unit, better, target in FIGURES:
        goal, ok = verdict(summary, key, better, target)
        name = f"{label} ({unit})" if unit else label
        lines.append(f"| {name} | " + " | ".join(cell(summary[s].get(key)) for s in servers) + f" | {goal} | {ok} |")
    if "acme" in summary:
        lines += ["", "| ACME issuance from Pebble (wall time, s) | wssd | lego | wssd/lego | target | met |",
                  "| --- | ---: | ---: | ---: | --- | --- |"]
        names = {"one": "1 certificate", "ten_sans": "1 certificate with 10 names", "twenty_certs": "20 certificates"}
        for case, stats in summary["acme"].items():
            ratio = (stats.get("ratio") or {}).get("median")
            failed = stats.get("failed_runs", 0)
            name = names.get(case, case) + (f" ({failed} run(s) failed, see latest.json)" if failed else "")
            if ratio is None:
                lines.append(f"| {name} | – | – | – | ≤ 0.2 | **no** |")
                continue
            lines.append(f"| {name} | {cell(stats['wssd_s'])} | {cell(stats['lego_s'])} | "
                         f"{ratio:.2f} | ≤ 0.2 | {'yes' if ratio <= 0.2 else '**no**'} |")
    if "fleet" in summary:
        f = summary["fleet"]
        n = int((f.get("replicas") or {}).get("median") or 0)
        certs = int((f.get("certificates") or {}).get("median") or 0)
        lines += ["", f"| Fleet: {n} replicas sharing one ACME certificate through etcd, "
                      f"{certs} certificates a run (9 s lifetime) | median (min–max) |",
                  "| --- | ---: |",
                  f"| publish to swap, p50 (ms) | {cell(f.get('convergence_p50_ms'))} |",
                  f"| publish to swap, p99 (ms) | {cell(f.get('convergence_p99_ms'))} |",
                  f"| orders per certificate (Pebble's log) | {cell(f.get('orders_per_renewal'))} |"]
        if f.get("failed_runs"):
            lines.append(f"| run(s) failed, see latest.json | {f['failed_runs']} |")
    lines += baseline_table(report)
    lines += ["", "Raw data: [`results/latest.json`](results/latest.json). Plot: [`results/latest.svg`](results/latest.svg).",
              "", "![throughput, latency and CPU per operation](results/latest.svg)"]
    return "\n".join(lines)


def svg(report):
    summary = report["summary"]
    servers = [s for s in summary if s not in ("acme", "wssd-base", "fleet")]
    colors = {"wssd": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#d62728"}
    panels = [("msg_per_s_64B", "64 B msg/s"), ("mb_per_s_16KiB", "16 KiB MB/s"), ("p99_ms_64B", "64 B p99 ms"),
              ("cpu_us_per_msg_64B", "CPU µs / 64 B msg"), ("cpu_ms_per_mb_16KiB", "CPU ms / MB"),
              ("cpu_us_per_conn_full", "CPU µs / new conn"), ("cpu_us_per_conn_resumed", "CPU µs / resumed conn"),
              ("cpu_us_per_msg_h2_64B", "CPU µs / 64 B msg over h2"), ("cpu_us_per_req_http1", "CPU µs / HTTP/1.1 req"),
              ("cpu_us_per_req_http2", "CPU µs / HTTP/2 req"),
              ("kib_per_idle_conn", "KiB / idle conn"), ("swap_p99_ms", "swap visible p99 ms")]
    w, h, cols = 220, 180, 3
    rows = (len(panels) + cols - 1) // cols
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * cols}" height="{h * rows + 30}" font-family="sans-serif" font-size="11">',
           f'<text x="10" y="18" font-size="13">wssd vs nginx vs HAProxy — {html.escape(report["date"])}, {html.escape(report["commit"])} (median, bars: min–max)</text>']
    for i, (key, title) in enumerate(panels):
        x0, y0 = (i % cols) * w, 30 + (i // cols) * h
        out.append(f'<text x="{x0 + 10}" y="{y0 + 14}" font-weight="bold">{html.escape(title)}</text>')
        values = [(s, summary[s].get(key)) for s in servers]
        top = max((v["max"] for _, v in values if v), default=1) or 1
        bw = (w - 40) / max(len(values), 1)
        for j, (s, v) in enumerate(values):
            if not v:
                continue
            bh = (h - 50) * v["median"] / top
            x, base = x0 + 20 + j * bw, y0 + h - 20
            out.append(f'<rect x="{x:.1f}" y="{base - bh:.1f}" width="{bw * 0.7:.1f}" height="{bh:.1f}" fill="{colors.get(s, "#888")}"/>')
            lo, hi = (h - 50) * v["min"] / top, (h - 50) * v["max"] / top
            cx = x + bw * 0.35
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{base - lo:.1f}" y2="{base - hi:.1f}" stroke="black"/>')
            out.append(f'<text x="{x:.1f}" y="{base - bh - 3:.1f}">{fmt(v["median"])}</text>')
            out.append(f'<text x="{x:.1f}" y="{base + 12:.1f}">{s}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write(report, out_dir, readme):
    out_dir = pathlib.Path(out_dir)
    (out_dir / "latest.svg").write_text(svg(report))
    if readme is None:
        return
    text = pathlib.Path(readme).read_text()
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        pathlib.Path(readme).write_text(before + START + "\n" + table(report) + "\n" + END + after)
