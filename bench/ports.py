"""Loopback ports for the benchmark's servers: free ones, and waiting until one listens."""
import socket
import time

_HANDED_OUT = set()


def free_port():
    """A free loopback port, never the same one twice: once a probe socket is closed the
    kernel may hand its port out again at once, and two servers of one run were once
    given the same port (Pebble's API and challtestsrv's management port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")
