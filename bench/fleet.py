"""The fleet row of the benchmark: N wssd replicas sharing one ACME certificate through a
real etcd (Debian `etcd-server`) and Pebble, through a series of renewals (9 s
certificates, so one comes due every 6 to 8 s).

Figures:
- convergence: for each certificate the fleet publishes, the time from its publish (the
  record's `published_at_ms`, the publisher's clock, the same machine) to the first TLS
  handshake with each replica that sees it. Every replica is handshaken with about every
  10 ms. p50 and p99 over all (certificate, replica) pairs.
- orders per renewal: the orders Pebble received (`Added order` in its log) per
  certificate the fleet obtained; 1.0 means one order per renewal for the whole fleet.

Pebble sends every validation to one replica's http-01 port (the others bind ports of
their own): that replica answers each order's validation from the engine, whichever
replica placed it.
"""
import base64
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

from pebble_env import Pebble
from ports import free_port, wait_port

NAME = "fleet.example.test"


class Etcd:
    def __init__(self, work):
        self.work = work
        self.client, self.peer = free_port(), free_port()

    def __enter__(self):
        etcd = shutil.which("etcd")
        if etcd is None:
            raise RuntimeError("etcd not found (Debian etcd-server)")
        client, peer = f"http://127.0.0.1:{self.client}", f"http://127.0.0.1:{self.peer}"
        self.log = open(self.work / "etcd.log", "w")
        self.proc = subprocess.Popen(
            [etcd, "--name", "b", "--data-dir", str(self.work / "etcd"), "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"b={peer}"], stdout=self.log, stderr=self.log)
        wait_port(self.client)
        self.endpoint = client
        return self

    def get(self, key):
        body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
        req = urllib.request.Request(f"{self.endpoint}/v3/kv/range", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=2) as r:
            kvs = json.load(r).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def leaf_digest(der):
    return hashlib.sha256(der).hexdigest()


def served_digest(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        with ctx.wrap_socket(s, server_hostname=NAME) as t:
            return leaf_digest(t.getpeercert(binary_form=True))


def watch_replica(port, seen, stop):
    """(time, digest) each time the served certificate changes."""
    last = None
    while not stop.is_set():
        try:
            d = served_digest(port)
            if d != last:
                seen.append((time.time(), d))
                last = d
        except OSError:
            pass
        time.sleep(0.01)


def fleet_bench(work, wssd, replicas=5, renewals=10):
    work.mkdir(parents=True, exist_ok=True)
    key = work / "fleet.key"
    key.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    key.chmod(0o600)
    with Etcd(work) as etcd, Pebble(work / "pebble", wssd, validity=9) as pebble:
        procs, ports, threads = [], [], []
        stop = threading.Event()
        try:
            for i in range(replicas):
                d = work / f"replica-{i}"
                d.mkdir()
                listen = free_port()
                http01 = pebble.http_port if i == 0 else free_port()
                cfg = (f'data_dir = "{d}/data"\n[listener]\nbind = "127.0.0.1:{listen}"\n'
                       + pebble.acme_section().replace(f"127.0.0.1:{pebble.http_port}", f"127.0.0.1:{http01}")
                       + f'[cluster]\nbackend = "etcd"\nendpoints = ["{etcd.endpoint}"]\nname = "bench"\n'
                         f'lease_ttl = "5s"\nencryption_key_file = "{key}"\n'
                         f'[[certificate]]\ndomains = ["{NAME}"]\nsource = "acme"\n')
                (d / "wssd.toml").write_text(cfg)
                log = open(d / "wssd.log", "w")
                procs.append(subprocess.Popen([str(wssd), "run", "--config", str(d / "wssd.toml")],
                                              stdout=log, stderr=log))
                ports.append(listen)
            for p in ports:
                wait_port(p, timeout=60)
            seen = [[] for _ in ports]
            threads = [threading.Thread(target=watch_replica, args=(p, s, stop), daemon=True)
                       for p, s in zip(ports, seen)]
            for t in threads:
                t.start()
            # Every record the fleet publishes: its leaf's digest and when it was published.
            published = {}
            deadline = time.time() + 60 + renewals * 20
            while len(published) < 1 + renewals and time.time() < deadline:
                value = etcd.get(f"wssd/bench/certs/{NAME}")
                if value:
                    record = json.loads(value)
                    der = ssl.PEM_cert_to_DER_cert(record["chain_pem"].split("-----END CERTIFICATE-----")[0]
                                                   + "-----END CERTIFICATE-----\n")
                    published.setdefault(leaf_digest(der), record["published_at_ms"] / 1000)
                time.sleep(0.02)
            time.sleep(2)  # the last one reaches every replica
        finally:
            stop.set()
            for t in threads:
                t.join()
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
        samples, missed = [], 0
        for digest, at in published.items():
            for s in seen:
                first = next((t for t, d in s if d == digest), None)
                if first is None:
                    missed += 1  # replaced before this replica was looked at, or never seen
                else:
                    samples.append(max(0.0, first - at) * 1000)
        orders = (work / "pebble/pebble.log").read_text(errors="replace").count("Added order")
        samples.sort()

        def q(p):
            return samples[min(len(samples) - 1, int(len(samples) * p))] if samples else None
        return {"replicas": replicas, "certificates": len(published), "orders": orders,
                "orders_per_renewal": orders / len(published) if published else None,
                "convergence_p50_ms": q(0.5), "convergence_p99_ms": q(0.99),
                "convergence_max_ms": samples[-1] if samples else None, "samples": len(samples), "missed": missed}
