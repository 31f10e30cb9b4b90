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
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
WSSD = ROOT / "target/release/wssd"
LOADGEN = ROOT / "target/release/wssd-loadgen"
TICK = os.sysconf("SC_CLK_TCK")
THREADS = os.cpu_count() or 2


from ports import free_port, wait_port  # noqa: E402  (bench/ports.py)


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


def cpu_split(pid):
    """User and system CPU seconds of pid and its descendants."""
    user = system = 0
    for p in descendants(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return user / TICK, system / TICK


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
    # Load phases this server cannot serve (nginx has no WebSockets over HTTP/2).
    unsupported = ()

    def __init__(self, work, tls, upstream_port, http_port):
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.ca = tls / "ca.pem"
        self.upstream_port = upstream_port
        self.http_port = http_port  # the HTTP phases' upstream, for paths under /http/
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
    binary = WSSD

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
workers = {THREADS}
[[certificate]]
domains = ["localhost"]
source = "files"
cert_file = "{self.work}/tls/cert.pem"
key_file = "{self.work}/tls/key.pem"
{self.routes()}""")
        return [str(self.binary), "run", "--config", str(self.work / "wssd.toml")]

    def routes(self):
        return f'[[route]]\npath = "/http/"\nupstream = "http://127.0.0.1:{self.http_port}"\n'


    def swap_args(self):
        # The pair is copied next to the live files first (untimed); the swap is two
        # renames, key first: no API call, no reload command.
        t, s = self.work / "tls", self.work.parent / "swaps"
        return ["--prepare-cmd", f"cp {s}/$1/key.pem {t}/.key.new && cp {s}/$1/cert.pem {t}/.cert.new",
                "--rename", f"{t}/.key.new:{t}/key.pem", "--rename", f"{t}/.cert.new:{t}/cert.pem"]


class WssdBaseline(Wssd):
    """wssd built from an earlier commit (`--baseline REV`), for the WebSocket figures
    only: the same run shows whether a change made them worse."""
    name = "wssd-base"
    binary = None  # set by main() from --baseline
    unsupported = ("throughput_h2_64B", "http1_get", "http2_get")

    def routes(self):
        return ""  # the baseline may predate [[route]]

class Nginx(Server):
    name = "nginx"
    unsupported = ("throughput_h2_64B",)

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
    # Keep-alive connections to the HTTP upstream, as nginx's docs advise for proxying.
    upstream http_upstream {{
        server 127.0.0.1:{self.http_port};
        keepalive 64;
        keepalive_requests 1000000000;
    }}
    # nginx closes a client connection after 1,000 requests by default (h2load does not
    # reconnect); wssd and HAProxy set no such limit.
    keepalive_requests 1000000000;
    server {{
        listen 127.0.0.1:{self.port} ssl http2;
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
        location /http/ {{
            proxy_pass http://http_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
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
    bind 127.0.0.1:{self.port} ssl crt {self.work}/site.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
    acl http_path path_beg /http/
    use_backend be_http if http_path
    default_backend be
backend be
    server up 127.0.0.1:{self.upstream_port}
backend be_http
    server up 127.0.0.1:{self.http_port}
""")
        return ["haproxy", "-db", "-f", str(self.work / "haproxy.cfg")]

    def swap_args(self):
        # The runtime API over its socket: set ssl cert + commit ssl cert, no reload.
        return ["--haproxy", f"{self.work}/admin.sock:{self.work}/site.pem"]


# The load phases behind the CPU-per-operation figures: (result key, client, arguments).
# The WebSocket phases use wssd-loadgen; the HTTP phases (keep-alive GETs of a 1 KiB
# response from the HTTP upstream, 50 requests in flight) use h2load (nghttp2-client).
LOAD_PHASES = [
    ("throughput_64B", "loadgen", ["throughput", "--conns", "50", "--size", "64"]),
    ("throughput_16KiB", "loadgen", ["throughput", "--conns", "50", "--size", "16384"]),
    ("connect_full", "loadgen", ["connect", "--conns", "8"]),
    ("connect_resumed", "loadgen", ["connect", "--conns", "8", "--resume"]),
    # 50 WebSockets over HTTP/2 (RFC 8441), 10 on each of 5 TLS connections.
    ("throughput_h2_64B", "loadgen", ["throughput", "--h2", "--per-conn", "10", "--conns", "50", "--size", "64"]),
    ("http1_get", "h2load", ["--h1", "--clients", "50", "--max-concurrent-streams", "1"]),
    ("http2_get", "h2load", ["--clients", "5", "--max-concurrent-streams", "10"]),
]
HTTP_SIZE = 1024


def h2load_slice(server, phase_args, secs):
    """One slice of an HTTP phase: h2load for one second of warm-up and `secs` measured,
    with the server's CPU seconds sampled at the measured window's edges (h2load counts
    only the requests done in it). The connections are made before the warm-up ends."""
    url = f"https://localhost:{server.port}/http/get"
    cmd = ["h2load", *phase_args, "--threads", "1", "--warm-up-time", "1", "--duration", str(secs), url]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(max(0.0, start + 1 - time.monotonic()))
        cpu0 = cpu_split(server.proc.pid)
        time.sleep(max(0.0, start + 1 + secs - time.monotonic()))
        cpu1 = cpu_split(server.proc.pid)
        out, _ = proc.communicate(timeout=secs + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = parse_h2load(out)
    if proc.returncode != 0 or result.get("succeeded", 0) == 0 or result.get("failed", 1) or result.get("non_2xx", 1):
        raise RuntimeError(f"h2load {' '.join(phase_args)} failed ({proc.returncode}): {out[-2000:]}")
    want = "h2" if "--h1" not in phase_args else "http/1.1"
    if result.get("protocol") != want:
        raise RuntimeError(f"h2load negotiated {result.get('protocol')}, not {want}: {out[-2000:]}")
    result["cpu_user_s"] = cpu1[0] - cpu0[0]
    result["cpu_sys_s"] = cpu1[1] - cpu0[1]
    result["cpu_s"] = result["cpu_user_s"] + result["cpu_sys_s"]
    return result


def parse_h2load(out):
    """The figures of h2load's report: requests, rate, mean request time, protocol."""
    r = {}
    for line in out.splitlines():
        words = line.replace(",", "").split()
        if line.startswith("Application protocol:"):
            r["protocol"] = words[-1]
        elif line.startswith("finished in"):
            r["req_per_s"] = float(words[3])
        elif line.startswith("requests:"):
            r["requests"] = int(words[1])
            r["succeeded"] = int(words[words.index("succeeded") - 1])
            r["failed"] = int(words[words.index("failed") - 1]) + int(words[words.index("errored") - 1])
        elif line.startswith("status codes:"):
            r["non_2xx"] = sum(int(words[words.index(k) - 1]) for k in ("3xx", "4xx", "5xx"))
        elif line.startswith("time for request:"):
            r["mean_ms"] = duration_ms(words[5])  # min, max, mean, sd, +/- sd
    return r


def duration_ms(value):
    """h2load's durations: 456us, 1.23ms, 1.02s."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if value.endswith(unit):
            return float(value[:-len(unit)]) * scale
    raise ValueError(f"not a duration: {value}")


def load_slice(server, phase_args, secs):
    """One slice of a load phase against one server, with the server's CPU seconds over
    the measured window (loadgen marks the window's edges on stdout)."""
    cmd = [str(LOADGEN), "--url", f"wss://localhost:{server.port}/", "--ca", str(server.ca),
           *phase_args, "--secs", str(secs)]
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        watchdog = threading.Timer(secs + 120, proc.kill)  # a wedged slice fails, not the run
        watchdog.start()
        try:
            cpu0 = cpu_split(server.proc.pid)
            cpu1 = None
            last = ""
            for line in proc.stdout:
                if '"window":"start"' in line:
                    cpu0 = cpu_split(server.proc.pid)
                elif '"window":"end"' in line:
                    cpu1 = cpu_split(server.proc.pid)
                elif line.strip():
                    last = line
            code = proc.wait()
        finally:
            watchdog.cancel()
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"loadgen {phase_args[0]} failed ({code}): {err.read()[-2000:]}")
    if cpu1 is None:  # connect mode: its whole run is the window
        cpu1 = cpu_split(server.proc.pid)
    result = json.loads(last)
    result["cpu_user_s"] = cpu1[0] - cpu0[0]
    result["cpu_sys_s"] = cpu1[1] - cpu0[1]
    result["cpu_s"] = result["cpu_user_s"] + result["cpu_sys_s"]
    return result


def combine(key, slices):
    """A phase's figures from its slices: counts and CPU summed, rates averaged,
    latency percentiles as the median of the slices'."""
    pick = lambda k: [s[k] for s in slices if k in s]
    out = {k: statistics.median(pick(k)) for k in ("p50_ms", "p99_ms", "p999_ms") if pick(k)}
    out["max_ms"] = max(pick("max_ms"), default=None)
    cpu = sum(pick("cpu_s"))
    if key.startswith("http"):
        requests = sum(pick("succeeded"))
        out.update(requests=requests, req_per_s=statistics.mean(pick("req_per_s")),
                   mean_ms=statistics.median(pick("mean_ms")),
                   cpu_us_per_req=cpu * 1e6 / max(requests, 1))
    elif key.startswith("throughput"):
        size = 64 if key.endswith("64B") else 16384
        messages = sum(pick("messages"))
        relayed = 2 * messages  # each echo crosses the server twice
        out.update(messages=messages, msg_per_s=statistics.mean(pick("msg_per_s")),
                   mb_per_s=statistics.mean(pick("mb_per_s")),
                   cpu_us_per_msg=cpu * 1e6 / max(relayed, 1),
                   # The kernel's share (TCP on loopback) is a floor every proxy pays.
                   cpu_user_us_per_msg=sum(pick("cpu_user_s")) * 1e6 / max(relayed, 1),
                   cpu_sys_us_per_msg=sum(pick("cpu_sys_s")) * 1e6 / max(relayed, 1),
                   cpu_ms_per_mb=cpu * 1e3 / max(relayed * size / 1e6, 1e-9))
    else:
        connections = sum(pick("connections"))
        out.update(connections=connections, conn_per_s=statistics.mean(pick("conn_per_s")),
                   resumed=sum(pick("resumed")), failed=sum(pick("failed")),
                   cpu_us_per_conn=cpu * 1e6 / max(connections, 1))
    out["slices"] = slices
    return out


def interleaved_load(servers, results, args):
    """The load phases for every running server, interleaved: each phase runs in
    `--rounds` slices, and in each round every server takes a turn, in an order rotated
    round by round. This shared VM's speed drifts by ±20% from minute to minute; run one
    server after the other and the drift lands on whoever ran in the slow minute.
    Interleaved, it lands on all of them alike. Idle servers cost nothing meanwhile."""
    names = list(servers)
    if not names:
        return
    # A warm-up slice each, not counted: in the first seconds after start-up every server
    # ran ~20% slower (whichever went first the most), on this VM.
    for name in names:
        try:
            load_slice(servers[name], LOAD_PHASES[0][2], args.secs)
        except Exception as e:
            results[name]["error"] = f"warm-up: {e}"[-2000:]
            print(f"{name}: warm-up: {e}", file=sys.stderr, flush=True)
    for key, client, phase_args in LOAD_PHASES:
        if args.phases and key not in args.phases.split(","):
            continue
        slices = {name: [] for name in names}
        for rnd in range(args.rounds):
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                if "error" in results[name] or key in servers[name].unsupported:
                    continue
                run_slice = h2load_slice if client == "h2load" else load_slice
                try:
                    slices[name].append(run_slice(servers[name], phase_args, args.secs))
                except Exception as e:  # reported in the results; the other servers go on
                    results[name]["error"] = str(e)[-2000:]
                    print(f"{name}: {e}", file=sys.stderr, flush=True)
        for name in names:
            if slices[name] and "error" not in results[name]:
                results[name][key] = combine(key, slices[name])


def measure_rest(server, args):
    """Idle memory and the hot swap, for one running server."""
    r = {}
    pid = server.proc.pid
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
    return r


def measure_all(servers, args):
    """Every figure for every server of one run."""
    results = {name: {} for name in servers}
    running = {}
    try:
        for name, server in servers.items():
            try:
                server.start()
                running[name] = server
            except Exception as e:
                results[name]["error"] = f"start: {e}"[-2000:]
        if running:
            print(f"  load phases, interleaved: {', '.join(running)}", file=sys.stderr, flush=True)
        interleaved_load(running, results, args)
        for name, server in running.items():
            if "error" in results[name] or args.quick:
                continue
            print(f"  idle memory and hot swap: {name}", file=sys.stderr, flush=True)
            try:
                results[name].update(measure_rest(server, args))
            except Exception as e:
                results[name]["error"] = str(e)[-2000:]
                print(f"{name}: {e}", file=sys.stderr, flush=True)
    finally:
        for server in running.values():
            server.stop()
    # Start-up: exec to the first handshake, certificates present; one server at a time.
    for name, server in servers.items():
        if "error" in results[name] or args.quick:
            continue
        try:
            server.install_certificate(server.tls)
            results[name]["startup"] = loadgen(server, "startup", "--", *server.command())
        except Exception as e:
            results[name]["error"] = str(e)[-2000:]
    return results


def acme_bench(work, args):
    """Wall time to issue certificates from Pebble: wssd issue against lego."""
    from pebble_env import Pebble  # bench/pebble_env.py
    results = {}
    with Pebble(work / "pebble", WSSD) as pebble:
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


def fleet_row(work, args):
    """5 replicas sharing one ACME certificate through etcd (bench/fleet.py)."""
    from fleet import fleet_bench
    try:
        return fleet_bench(work / "fleet", WSSD, replicas=5, renewals=args.fleet_renewals)
    except Exception as e:  # reported; the rest of the run stands
        print(f"fleet: {e}", file=sys.stderr, flush=True)
        return {"error": str(e)[-2000:]}


def build_baseline(rev):
    """wssd's release binary at commit `rev`, built once in a worktree of its own (with
    its own target directory, kept under target/bench-baseline for the next run)."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    out = ROOT / "target/bench-baseline" / f"wssd-{commit[:12]}"
    if out.exists():
        return out
    tree = ROOT / "target/bench-baseline" / "tree"
    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        print(f"building the baseline wssd at {commit[:12]}", file=sys.stderr, flush=True)
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "wssd", "--bin", "wssd",
                        "--target-dir", str(ROOT / "target/bench-baseline/target")], cwd=tree, check=True)
        shutil.copy(ROOT / "target/bench-baseline/target/release/wssd", out)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    return out


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
        "cpu_user_us_per_msg_64B": ("throughput_64B", "cpu_user_us_per_msg"),
        "cpu_sys_us_per_msg_64B": ("throughput_64B", "cpu_sys_us_per_msg"),
        "cpu_ms_per_mb_16KiB": ("throughput_16KiB", "cpu_ms_per_mb"),
        "conn_per_s_full": ("connect_full", "conn_per_s"), "p99_ms_conn_full": ("connect_full", "p99_ms"),
        "cpu_us_per_conn_full": ("connect_full", "cpu_us_per_conn"),
        "conn_per_s_resumed": ("connect_resumed", "conn_per_s"), "p99_ms_conn_resumed": ("connect_resumed", "p99_ms"),
        "cpu_us_per_conn_resumed": ("connect_resumed", "cpu_us_per_conn"),
        "resumed": ("connect_resumed", "resumed"),
        "msg_per_s_h2_64B": ("throughput_h2_64B", "msg_per_s"), "p99_ms_h2_64B": ("throughput_h2_64B", "p99_ms"),
        "cpu_us_per_msg_h2_64B": ("throughput_h2_64B", "cpu_us_per_msg"),
        "req_per_s_http1": ("http1_get", "req_per_s"), "mean_ms_http1": ("http1_get", "mean_ms"),
        "cpu_us_per_req_http1": ("http1_get", "cpu_us_per_req"),
        "req_per_s_http2": ("http2_get", "req_per_s"), "mean_ms_http2": ("http2_get", "mean_ms"),
        "cpu_us_per_req_http2": ("http2_get", "cpu_us_per_req"),
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
    if all("fleet" in run for run in runs):
        keys = ("replicas", "certificates", "orders_per_renewal", "convergence_p50_ms", "convergence_p99_ms",
                "convergence_max_ms")
        out["fleet"] = {**{k: median_spread([run["fleet"].get(k) for run in runs]) for k in keys},
                        "failed_runs": sum("error" in run["fleet"] for run in runs)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--secs", type=int, default=3, help="seconds per slice of a load phase")
    parser.add_argument("--rounds", type=int, default=3, help="slices per load phase and server (interleaved)")
    parser.add_argument("--idle", type=int, default=9000, help="idle connections (see bench/README.md)")
    parser.add_argument("--live", type=int, default=1000)
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--servers", default="wssd,nginx,haproxy")
    parser.add_argument("--no-acme", action="store_true")
    parser.add_argument("--no-fleet", action="store_true", help="skip the fleet row (5 replicas on etcd)")
    parser.add_argument("--fleet-renewals", type=int, default=10)
    parser.add_argument("--phases", help="only these load phases, comma-separated (e.g. http1_get,http2_get)")
    parser.add_argument("--quick", action="store_true", help="the load phases only: no idle memory, swap or start-up")
    parser.add_argument("--out", default=str(ROOT / "bench/results"))
    parser.add_argument("--baseline", metavar="REV",
                        help="also run wssd built from commit REV, as `wssd-base` (WebSocket figures only)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    classes = {"wssd": Wssd, "nginx": Nginx, "haproxy": Haproxy}
    if args.baseline:
        WssdBaseline.binary = build_baseline(args.baseline)
        args.baseline = subprocess.run(["git", "rev-parse", "--short=12", args.baseline], cwd=ROOT,
                                       capture_output=True, text=True, check=True).stdout.strip()
        classes["wssd-base"] = WssdBaseline
        if "wssd-base" not in args.servers.split(","):
            args.servers += ",wssd-base"
    runs = []
    for n in range(args.repeat):
        work = pathlib.Path(tempfile.mkdtemp(prefix="wssd-bench-"))
        upstream_port = free_port()
        upstream = subprocess.Popen([str(LOADGEN), "upstream", "--listen", f"127.0.0.1:{upstream_port}"],
                                    stderr=subprocess.DEVNULL)
        http_port = free_port()
        http_upstream = subprocess.Popen([str(LOADGEN), "http-upstream", "--listen", f"127.0.0.1:{http_port}",
                                          "--size", str(HTTP_SIZE)], stderr=subprocess.DEVNULL)
        try:
            wait_port(upstream_port)
            wait_port(http_port)
            tls = prepare(work, args.swaps)
            print(f"run {n + 1}/{args.repeat}", file=sys.stderr, flush=True)
            names = [x for x in args.servers.split(",") if x]
            run = {"servers": measure_all({name: classes[name](work, tls, upstream_port, http_port) for name in names}, args)}
            if not args.no_acme:
                print(f"run {n + 1}/{args.repeat}: acme", file=sys.stderr, flush=True)
                run["acme"] = acme_bench(work, args)
            if not args.no_fleet:
                print(f"run {n + 1}/{args.repeat}: fleet", file=sys.stderr, flush=True)
                run["fleet"] = fleet_row(work, args)
            runs.append(run)
            pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
            (pathlib.Path(args.out) / "partial.json").write_text(json.dumps(runs, indent=2))
        finally:
            for proc in (upstream, http_upstream):
                proc.terminate()
                proc.wait()
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
    # The table in bench/README.md follows the results in bench/results only, so a quick
    # look elsewhere (--out) leaves the published figures alone.
    published = out.resolve() == (ROOT / "bench/results").resolve()
    render.write(report, out, ROOT / "bench/README.md" if published else None)
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
