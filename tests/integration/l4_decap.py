#!/usr/bin/env python3
"""A backend's tunnel end for the L4 tests: decapsulates IP-in-IP and GUE.

The test kernel has no ipip/fou modules, so this does in user space what
`ip link add ... type ipip` would: a raw IPPROTO_IPIP socket and a UDP
socket on the GUE port receive the encapsulated packets Moat sends, and the
inner packet is written to a TUN device, where the kernel delivers it to
the VIP on the loopback like any received packet. Replies go straight to
the client (direct server return).

Usage (inside the backend's network namespace):
  l4_decap.py --tun vip0 --gue-port 6080
Prints "ready" once both sockets and the TUN device exist.
"""
import argparse
import fcntl
import os
import select
import socket
import struct
import subprocess
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tun", default="vip0")
    ap.add_argument("--gue-port", type=int, default=6080)
    a = ap.parse_args()
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", a.tun.encode(), IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", a.tun, "up"], check=True)
    for k in ("all", "default", a.tun):
        subprocess.run(["sysctl", "-qw", f"net.ipv4.conf.{k}.rp_filter=0"], check=True)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)  # IPPROTO_IPIP
    gue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gue.bind(("0.0.0.0", a.gue_port))
    print("ready", flush=True)
    while True:
        r, _, _ = select.select([raw, gue], [], [])
        if raw in r:
            pkt = raw.recv(65535)  # outer IPv4 header included
            ihl = (pkt[0] & 0x0F) * 4
            os.write(tun, pkt[ihl:])
        if gue in r:
            data = gue.recv(65535)
            # GUE variant 0: 4-byte header (hlen 0), proto_ctype 4 = IPv4 inner.
            if len(data) > 4 and (data[0] >> 6) == 0 and data[1] in (4, 41):
                hlen = (data[0] & 0x1F) * 4
                os.write(tun, data[4 + hlen:])


if __name__ == "__main__":
    sys.exit(main())
