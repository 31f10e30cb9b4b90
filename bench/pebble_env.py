"""Pebble (Let's Encrypt's test CA, Debian `pebble`) and its mock DNS server on free
loopback ports, for the ACME figures of the benchmark (the same setup as
tests/common/pebble.rs)."""
import json
import os
import socket
import subprocess
import time

from ports import free_port, wait_port


class Pebble:
    def __init__(self, work, wssd, validity=None):
        """`wssd`: the binary that makes Pebble's TLS certificate; `validity`: the
        certificates' lifetime in seconds (Pebble's default: five years)."""
        self.work = work
        self.wssd = wssd
        self.validity = validity
        work.mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        env = {**os.environ, "XDG_DATA_HOME": str(self.work / "xdg")}
        subprocess.run([str(self.wssd), "selfsigned", "--out-dir", str(self.work / "tls"), "--domain", "localhost",
                        "--domain", "127.0.0.1", "--ca-dir", str(self.work / "ca")], check=True, capture_output=True, env=env)
        self.tls_ca = self.work / "tls/ca.pem"
        listen, mgmt, self.http_port, tls_port, dns, dns_mgmt = (free_port() for _ in range(6))
        (self.work / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{listen}", "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": str(self.work / "tls/cert.pem"), "privateKey": str(self.work / "tls/key.pem"),
            "httpPort": self.http_port, "tlsPort": tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            **({"certificateValidityPeriod": self.validity} if self.validity else {})}}))
        log = open(self.work / "pebble.log", "w")
        self.dns = subprocess.Popen(["pebble-challtestsrv", "-management", f"127.0.0.1:{dns_mgmt}", "-dns01", f"127.0.0.1:{dns}",
                                     "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                                    stdout=log, stderr=log)
        self.pebble = subprocess.Popen(["pebble", "-config", str(self.work / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
                                       stdout=log, stderr=log, env={**os.environ, "PEBBLE_VA_NOSLEEP": "1"})
        for port in (listen, dns_mgmt):
            wait_port(port)
        self.directory = f"https://127.0.0.1:{listen}/dir"
        return self

    def acme_section(self):
        return (f'[acme]\ndirectory = "{self.directory}"\nca_file = "{self.tls_ca}"\n'
                f'challenge = "http-01"\nhttp01_bind = "127.0.0.1:{self.http_port}"\n')

    def __exit__(self, *exc):
        for p in (self.pebble, self.dns):
            p.terminate()
            p.wait()
