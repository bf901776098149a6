#!/usr/bin/env python3
"""The client side of the L4 tests, run inside the client's namespace.

  l4_client.py fetch VIP PORT N            N new connections, one GET each
  l4_client.py hold VIP PORT K             K keep-alive connections; one GET on
                                           each, then one more per line read
                                           from stdin (until EOF)

Prints one JSON line per round: the backend name per connection, or
"error:<reason>" for a connection that failed (reset, timeout).
"""
import http.client
import json
import socket
import sys


def backend_of(conn):
    conn.request("GET", "/")
    r = conn.getresponse()
    body = r.read()
    return json.loads(body)["backend"] if r.status == 200 else f"status:{r.status}"


def one(vip, port):
    c = http.client.HTTPConnection(vip, port, timeout=3)
    try:
        return backend_of(c)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return "error:" + type(e).__name__
    finally:
        c.close()


def main():
    cmd, vip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if cmd == "fetch":
        print(json.dumps([one(vip, port) for _ in range(n)]), flush=True)
        return
    conns = [http.client.HTTPConnection(vip, port, timeout=3) for _ in range(n)]

    def round_():
        out = []
        for c in conns:
            try:
                out.append(backend_of(c))
            except (OSError, http.client.HTTPException, ValueError) as e:
                out.append("error:" + type(e).__name__)
        print(json.dumps(out), flush=True)

    round_()
    for _ in sys.stdin:
        round_()


if __name__ == "__main__":
    main()
