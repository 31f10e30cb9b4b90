#!/usr/bin/env python3
"""wssd's benchmark suite: wssd against nginx and HAProxy (and lego for ACME), in one run,
on loopback, with the same certificate, the same upstream and the same client.

Run it with `bench/run` (which installs and builds what it needs). Every figure is
measured for every server in the same run, and the run is repeated; the results (median
and spread) go to bench/results/ as JSON and an SVG plot, and to the table in
bench/README.md. Nothing here asserts numbers: this reports them.

Server CPU per operation is the user+sys time of the server's processes over a phase,
divided by the operations done; it does not depend on the client's share of the cores.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
WSSD = ROOT / "target/release/wssd"
LOADGEN = ROOT / "target/release/wssd-loadgen"
TICK = os.sysconf("SC_CLK_TCK")
THREADS = os.cpu_count() or 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def descendants(pid):
    """pid and all its descendants (nginx's workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    total = 0
    for p in descendants(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / TICK


def rss_kib(pid):
    total = 0
    for p in descendants(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def loadgen(server, *args, timeout=600):
    cmd = [str(LOADGEN), "--url", f"wss://localhost:{server.port}/", "--ca", str(server.ca), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {args[0]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Server:
    """A server under test: started in the foreground, stopped with SIGTERM."""

    name = "?"

    def __init__(self, work, tls, upstream_port):
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.ca = tls / "ca.pem"
        self.upstream_port = upstream_port
        self.port = free_port()
        self.proc = None

    def command(self):
        raise NotImplementedError

    def start(self):
        self.install_certificate(self.tls)
        self.proc = subprocess.Popen(self.command(), cwd=self.work, stdout=subprocess.DEVNULL,
                                     stderr=open(self.work / "server.log", "a"))
        wait_port(self.port)
        time.sleep(0.3)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def install_certificate(self, source):
        raise NotImplementedError

    def swap_args(self):
        """How wssd-loadgen swaps this server's certificate (see its `swap` mode)."""
        raise NotImplementedError


class Wssd(Server):
    name = "wssd"

    def install_certificate(self, source):
        (self.work / "tls").mkdir(exist_ok=True)
        for f in ("cert.pem", "key.pem"):
            shutil.copy(source / f, self.work / "tls" / f)
        os.chmod(self.work / "tls/key.pem", 0o600)

    def command(self):
        (self.work / "wssd.toml").write_text(f"""
data_dir = "{self.work}/data"
[listener]
bind = "127.0.0.1:{self.port}"
upstream = "ws://127.0.0.1:{self.upstream_port}"
max_connections = 50000
[[certificate]]
domains = ["localhost"]
source = "files"
cert_file = "{self.work}/tls/cert.pem"
key_file = "{self.work}/tls/key.pem"
""")
        return [str(WSSD), "run", "--config", str(self.work / "wssd.toml")]

    def swap_args(self):
        # The pair is copied next to the live files first (untimed); the swap is two
        # renames, key first: no API call, no reload command.
        t, s = self.work / "tls", self.work.parent / "swaps"
        return ["--prepare-cmd", f"cp {s}/$1/key.pem {t}/.key.new && cp {s}/$1/cert.pem {t}/.cert.new",
                "--rename", f"{t}/.key.new:{t}/key.pem", "--rename", f"{t}/.cert.new:{t}/cert.pem"]


class Nginx(Server):
    name = "nginx"

    def install_certificate(self, source):
        for f in ("cert.pem", "key.pem"):
            shutil.copy(source / f, self.work / f)

    def command(self):
        for d in ("logs", "tmp"):
            (self.work / d).mkdir(exist_ok=True)
        (self.work / "nginx.conf").write_text(f"""
worker_processes {THREADS};
pid {self.work}/nginx.pid;
error_log {self.work}/logs/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {self.work}/tmp/body;
    proxy_temp_path {self.work}/tmp/proxy;
    fastcgi_temp_path {self.work}/tmp/fastcgi;
    uwsgi_temp_path {self.work}/tmp/uwsgi;
    scgi_temp_path {self.work}/tmp/scgi;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.work}/cert.pem;
        ssl_certificate_key {self.work}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://127.0.0.1:{self.upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
""")
        return ["nginx", "-p", str(self.work), "-c", str(self.work / "nginx.conf"), "-g", "daemon off;"]

    def swap_args(self):
        # New files in place (untimed), then the timed `nginx -s reload`.
        s = self.work.parent / "swaps"
        return ["--prepare-cmd", f"cp {s}/$1/key.pem {self.work}/key.pem && cp {s}/$1/cert.pem {self.work}/cert.pem",
                "--swap-cmd", f"nginx -p {self.work} -c {self.work}/nginx.conf -s reload"]


class Haproxy(Server):
    name = "haproxy"

    def install_certificate(self, source):
        (self.work / "site.pem").write_text((source / "cert.pem").read_text() + (source / "key.pem").read_text())

    def command(self):
        (self.work / "haproxy.cfg").write_text(f"""
global
    nbthread {THREADS}
    maxconn 9700
    stats socket {self.work}/admin.sock level admin
    log stderr format raw local0 err
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend fe
    bind 127.0.0.1:{self.port} ssl crt {self.work}/site.pem alpn http/1.1 ssl-min-ver TLSv1.2
    default_backend be
backend be
    server up 127.0.0.1:{self.upstream_port}
""")
        return ["haproxy", "-db", "-f", str(self.work / "haproxy.cfg")]

    def swap_args(self):
        # The runtime API over its socket: set ssl cert + commit ssl cert, no reload.
        return ["--haproxy", f"{self.work}/admin.sock:{self.work}/site.pem"]


def measure(server, args):
    """One server through every phase; returns its figures."""
    r = {}
    server.start()
    pid = server.proc.pid
    try:
        for size, key in ((64, "64B"), (16384, "16KiB")):
            cpu0 = cpu_seconds(pid)
            t = loadgen(server, "throughput", "--conns", "50", "--size", str(size), "--secs", str(args.secs))
            cpu = cpu_seconds(pid) - cpu0
            relayed = 2 * t["messages"]  # each echo crosses the server twice
            t["cpu_us_per_msg"] = cpu * 1e6 / relayed
            t["cpu_ms_per_mb"] = cpu * 1e3 / (relayed * size / 1e6)
            r[f"throughput_{key}"] = t
        for resume in (False, True):
            cpu0 = cpu_seconds(pid)
            c = loadgen(server, "connect", "--conns", "8", "--secs", str(args.secs), *(["--resume"] if resume else []))
            c["cpu_us_per_conn"] = (cpu_seconds(pid) - cpu0) * 1e6 / max(c["connections"], 1)
            r["connect_resumed" if resume else "connect_full"] = c
        # Idle connections: RSS delta per connection, summed over the server's processes.
        base = rss_kib(pid)
        cmd = [str(LOADGEN), "--url", f"wss://localhost:{server.port}/", "--ca", str(server.ca), "idle", "--conns", str(args.idle)]
        holder = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(holder.stdout.readline())
        time.sleep(2)
        held_rss = rss_kib(pid)
        holder.stdin.close()
        holder.wait(timeout=120)
        r["idle"] = {"connections": ready["ready"], "failed": ready["failed"], "rss_base_kib": base, "rss_kib": held_rss,
                     "kib_per_conn": (held_rss - base) / max(ready["ready"], 1)}
        time.sleep(2)
        # Hot swap under load.
        r["swap"] = loadgen(server, "swap", "--live", str(args.live), "--swaps", str(args.swaps),
                            "--cert-dir", str(server.work.parent / "swaps"), *server.swap_args(), timeout=1200)
    finally:
        server.stop()
    # Start-up: exec to the first handshake, certificates present.
    server.install_certificate(server.tls)
    r["startup"] = loadgen(server, "startup", "--", *server.command())
    return r


def acme_bench(work, args):
    """Wall time to issue certificates from Pebble: wssd issue against lego."""
    from pebble_env import Pebble  # bench/pebble_env.py
    results = {}
    with Pebble(work / "pebble") as pebble:
        cases = [("one", [["one.example.test"]]),
                 ("ten_sans", [[f"n{i}.tensan.example.test" for i in range(10)]]),
                 ("twenty_certs", [[f"c{i}.many.example.test"] for i in range(20)])]
        for case, certs in cases:
            try:
                results[case] = acme_case(work, pebble, case, certs)
            except Exception as e:  # one failed case is reported; the others still run
                log = (work / "pebble/pebble.log").read_text(errors="replace")[-3000:]
                results[case] = {"error": str(e)[-2000:], "pebble_log": log}
                print(f"acme {case}: {e}", file=sys.stderr, flush=True)
    return results


def acme_case(work, pebble, case, certs):
    """One case: `wssd issue` for all its certificates in one pass, then lego."""
    # wssd: one `wssd issue` pass for all certificates of the case.
    d = work / f"acme-wssd-{case}"
    d.mkdir(parents=True, exist_ok=True)
    cfg = f'data_dir = "{d}/data"\n[listener]\nbind = "127.0.0.1:0"\n'
    for names in certs:
        cfg += "[[certificate]]\ndomains = [" + ", ".join(f'"{n}"' for n in names) + ']\nsource = "acme"\n'
    cfg += pebble.acme_section()
    (d / "wssd.toml").write_text(cfg)
    start = time.monotonic()
    out = subprocess.run([str(WSSD), "issue", "--config", str(d / "wssd.toml")], capture_output=True, text=True)
    wssd_s = time.monotonic() - start
    if out.returncode != 0:
        raise RuntimeError(f"wssd issue failed: {out.stderr[-2000:]}")
    # lego: one run per certificate (that is how lego is used).
    ld = work / f"acme-lego-{case}"
    start = time.monotonic()
    for names in certs:
        cmd = ["lego", "--server", pebble.directory, "--accept-tos", "--email", "ops@example.test",
               "--path", str(ld), "--http", "--http.port", f"127.0.0.1:{pebble.http_port}"]
        for n in names:
            cmd += ["--domains", n]
        cmd.append("run")
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LEGO_CA_CERTIFICATES": str(pebble.tls_ca)})
        if out.returncode != 0:
            raise RuntimeError(f"lego failed: {out.stderr[-2000:]}")
    lego_s = time.monotonic() - start
    return {"wssd_s": wssd_s, "lego_s": lego_s, "ratio": wssd_s / lego_s}


def prepare(work, swaps):
    env = {**os.environ, "XDG_DATA_HOME": str(work / "xdg")}
    def selfsigned(out):
        subprocess.run([str(WSSD), "selfsigned", "--out-dir", str(out), "--domain", "localhost"],
                       check=True, capture_output=True, env=env)
    selfsigned(work / "tls")
    for i in range(1, swaps + 1):
        selfsigned(work / "swaps" / str(i))
    return work / "tls"


def median_spread(values):
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs):
    """Per server and figure: median and spread over the runs."""
    figures = {
        "msg_per_s_64B": ("throughput_64B", "msg_per_s"), "p99_ms_64B": ("throughput_64B", "p99_ms"),
        "p999_ms_64B": ("throughput_64B", "p999_ms"), "mb_per_s_16KiB": ("throughput_16KiB", "mb_per_s"),
        "p99_ms_16KiB": ("throughput_16KiB", "p99_ms"), "cpu_us_per_msg_64B": ("throughput_64B", "cpu_us_per_msg"),
        "cpu_ms_per_mb_16KiB": ("throughput_16KiB", "cpu_ms_per_mb"),
        "conn_per_s_full": ("connect_full", "conn_per_s"), "p99_ms_conn_full": ("connect_full", "p99_ms"),
        "cpu_us_per_conn_full": ("connect_full", "cpu_us_per_conn"),
        "conn_per_s_resumed": ("connect_resumed", "conn_per_s"), "p99_ms_conn_resumed": ("connect_resumed", "p99_ms"),
        "cpu_us_per_conn_resumed": ("connect_resumed", "cpu_us_per_conn"),
        "resumed": ("connect_resumed", "resumed"),
        "kib_per_idle_conn": ("idle", "kib_per_conn"),
        "swap_p50_ms": ("swap", "p50_ms"), "swap_p99_ms": ("swap", "p99_ms"), "swap_max_ms": ("swap", "max_ms"),
        "swap_dropped": ("swap", "dropped"), "swap_timeouts": ("swap", "timeouts"),
        "startup_ms": ("startup", "startup_ms"),
    }
    out = {}
    for server in runs[0]["servers"]:
        out[server] = {f: median_spread([run["servers"][server].get(a, {}).get(b) for run in runs]) for f, (a, b) in figures.items()}
    if all("acme" in run for run in runs):
        out["acme"] = {case: {**{k: median_spread([run["acme"][case].get(k) for run in runs]) for k in ("wssd_s", "lego_s", "ratio")},
                              "failed_runs": sum("error" in run["acme"][case] for run in runs)}
                       for case in runs[0]["acme"]}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--secs", type=int, default=8, help="seconds per throughput/connect phase")
    parser.add_argument("--idle", type=int, default=9000, help="idle connections (see bench/README.md)")
    parser.add_argument("--live", type=int, default=1000)
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--servers", default="wssd,nginx,haproxy")
    parser.add_argument("--no-acme", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench/results"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    classes = {"wssd": Wssd, "nginx": Nginx, "haproxy": Haproxy}
    runs = []
    for n in range(args.repeat):
        work = pathlib.Path(tempfile.mkdtemp(prefix="wssd-bench-"))
        upstream_port = free_port()
        upstream = subprocess.Popen([str(LOADGEN), "upstream", "--listen", f"127.0.0.1:{upstream_port}"],
                                    stderr=subprocess.DEVNULL)
        try:
            wait_port(upstream_port)
            tls = prepare(work, args.swaps)
            run = {"servers": {}}
            for name in filter(None, args.servers.split(",")):
                print(f"run {n + 1}/{args.repeat}: {name}", file=sys.stderr, flush=True)
                try:
                    run["servers"][name] = measure(classes[name](work, tls, upstream_port), args)
                except Exception as e:  # reported in the results; the other servers still run
                    run["servers"][name] = {"error": str(e)[-2000:]}
                    print(f"{name}: {e}", file=sys.stderr, flush=True)
            if not args.no_acme:
                print(f"run {n + 1}/{args.repeat}: acme", file=sys.stderr, flush=True)
                run["acme"] = acme_bench(work, args)
            runs.append(run)
            pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
            (pathlib.Path(args.out) / "partial.json").write_text(json.dumps(runs, indent=2))
        finally:
            upstream.terminate()
            upstream.wait()
            shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "threads": THREADS,
        "settings": vars(args),
        "summary": summarize(runs),
        "runs": runs,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report, indent=2))
    import report as render  # bench/report.py
    render.write(report, out, ROOT / "bench/README.md")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
