#!/usr/bin/python3
"""The real ttt-serve's /metrics endpoint under hostile HTTP clients (issue 9 #12), in the process
that links LibTorch (where prometheus-cpp's civetweb exposer could not start): a scrape is answered
while a client trickles its header a byte at a time and 20 idle connections are open (all of them
still open when the scrape's answer has arrived: the old responder, one connection at a time with a
2 s timeout per recv, answered only after closing them); an oversized header gets 431.

Usage: metrics_http_e2e_test.py SERVER_BINARY MODEL_DIR
"""
import select
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from e2e_support import ServeProcess, wait_http


def still_open(sock):
    """True while the server has neither closed nor reset the connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return len(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) > 0
    except OSError:
        return False


def raw_request(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def check_slow_and_idle(port):
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    slow = socket.create_connection(("127.0.0.1", port))
    stop = threading.Event()

    def trickle():  # one byte every 0.2 s, never a whole header
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
        i = 0
        while not stop.is_set():
            slow.send(request[i:i + 1] if i < len(request) else b"z")
            i += 1
            time.sleep(0.2)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        time.sleep(0.5)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=120) as r:
            body = r.read().decode()
            assert r.status == 200, r.status
        assert "tttserve_build_info" in body, body[:300]
        closed = [i for i, s in enumerate(idle) if not still_open(s)]
        assert not closed, "idle connections %s were closed before the scrape was answered" % closed
        assert still_open(slow), "the trickling client was closed before the scrape was answered"
        print("OK: scrape answered with 20 idle connections and a trickling client still open")
    finally:
        stop.set()
        t.join()
        for s in idle + [slow]:
            s.close()


def check_oversized_header(port):
    answer = raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 +
                         b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    print("OK: a 64 KiB header gets", answer.split(b"\r\n")[0].decode())


def main():
    server_bin, model = sys.argv[1:3]
    tmp = tempfile.mkdtemp(prefix="ttt-metrics-http-")
    server = ServeProcess(server_bin, model, tmp, ["--threads=1", "--checkpoint_on_shutdown=false"])
    metrics_port = server.metrics_port
    try:
        server.start()
        wait_http("http://127.0.0.1:%d/metrics" % metrics_port, 120)
        check_slow_and_idle(metrics_port)
        check_oversized_header(metrics_port)
        assert server.proc.poll() is None, "the server died"
        wait_http("http://127.0.0.1:%d/metrics" % metrics_port, 10)
    except Exception:
        print(server.output())
        raise
    finally:
        server.stop(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
