#!/usr/bin/env python3
"""Swaps HAProxy's certificate through its runtime API, the way HAProxy documents it:
`set ssl cert FILE <<` with the new PEM (chain, then key), then `commit ssl cert FILE`.
Usage: haproxy-swap.py ADMIN_SOCKET CRT_FILE PAIR_DIR (PAIR_DIR holds cert.pem, key.pem)."""
import socket
import sys

sock_path, crt, pair = sys.argv[1:4]
pem = open(f"{pair}/cert.pem").read() + open(f"{pair}/key.pem").read()


def command(text):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(text.encode())
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out.decode()


first = command(f"set ssl cert {crt} <<\n{pem.rstrip()}\n\n")
second = command(f"commit ssl cert {crt}\n")
if "Success" not in second:
    sys.exit(f"haproxy-swap: {first.strip()} / {second.strip()}")
