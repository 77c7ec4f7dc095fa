#!/usr/bin/env python3
"""The fleet bench: N agents (the real binary) on one machine share one endpoint, which is
down for an outage while each agent has M events queued, then comes back. It reports when
each robot's first request came after the return, how long the fleet took to drain, the
peak requests per second and concurrent connections at the endpoint, and its 429/503s.

    scripts/fleet.py [--agents 40] [--events 200] [--outage 30] [--capacity 0]
                     [--binary target/release/fleethook]

--capacity N makes the endpoint answer 503 with Retry-After: 5 beyond N requests in any
second, so herd control is measured, not only speed; the report then also counts requests
a robot sent inside a Retry-After it had been given. Needs mosquitto and paho-mqtt (the
script puts paho in a venv under target/ when it is missing). Loopback only.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_paho():
    try:
        import paho.mqtt.client  # noqa: F401
        return
    except ImportError:
        pass
    venv = os.path.join(ROOT, "target", "fleetenv")
    py = os.path.join(venv, "bin", "python3")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    subprocess.check_call([py, "-m", "pip", "install", "-q", "paho-mqtt"])
    os.execv(py, [py] + sys.argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """What the endpoint saw: every request with its time, device and answer."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.lock = threading.Lock()
        self.requests = []  # (t, device, delivery, status)
        self.window = []  # times of answered requests in the last second
        self.open = 0
        self.peak_open = 0

    def answer(self, device, delivery):
        now = time.monotonic()
        with self.lock:
            self.window = [t for t in self.window if now - t < 1.0]
            over = self.capacity and len(self.window) >= self.capacity
            status = 503 if over else 200
            if not over:
                self.window.append(now)
            self.requests.append((now, device, delivery, status))
        return status

    def connected(self, delta):
        with self.lock:
            self.open += delta
            self.peak_open = max(self.peak_open, self.open)


def serve(endpoint, port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            endpoint.connected(1)

        def finish(self):
            endpoint.connected(-1)
            super().finish()

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status = endpoint.answer(self.headers.get("x-fleethook-device"), self.headers.get("x-fleethook-delivery"))
            self.send_response(status)
            if status == 503:
                self.send_header("retry-after", "5")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=40)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--outage", type=float, default=30.0)
    ap.add_argument("--capacity", type=int, default=0)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "fleethook"))
    args = ap.parse_args()
    ensure_paho()
    import paho.mqtt.client as mqtt

    work = tempfile.mkdtemp(prefix="fleet-")
    broker_port, http_port = free_port(), free_port()
    with open(os.path.join(work, "mosquitto.conf"), "w") as f:
        f.write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"
                "max_queued_messages 0\nmax_inflight_messages 100\n")
    procs = [subprocess.Popen(["mosquitto", "-c", os.path.join(work, "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(0.5)
    try:
        for i in range(args.agents):
            d = os.path.join(work, f"agv-{i}")
            os.makedirs(d)
            with open(os.path.join(d, "fleethook.toml"), "w") as f:
                f.write(f'''device_id = "agv-{i}"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
[storage]
path = "{d}/outbox.db"
[status]
socket = "{d}/status.sock"
[heartbeat]
interval = "0s"
[[route]]
topic = "fleet/agv-{i}/mission"
event = "mission.{{/status}}"
[[subscription]]
name = "ops"
url = "http://127.0.0.1:{http_port}/hook"
allow_http = true
signature = "none"
''')
            procs.append(subprocess.Popen([args.binary, "run", "--config", os.path.join(d, "fleethook.toml")],
                                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "w")))
        time.sleep(3)
        down = time.monotonic()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-publisher")
        client.max_inflight_messages_set(1000)
        client.connect("127.0.0.1", broker_port)
        client.loop_start()
        infos = []
        for n in range(args.events):
            for i in range(args.agents):
                payload = json.dumps({"status": "completed", "mission_id": f"m-{n}", "seq": n})
                infos.append(client.publish(f"fleet/agv-{i}/mission", payload, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        client.loop_stop()
        total = args.agents * args.events
        remaining = args.outage - (time.monotonic() - down)
        if remaining > 0:
            time.sleep(remaining)
        endpoint = Endpoint(args.capacity)
        back = time.monotonic()
        server = serve(endpoint, http_port)
        deadline = back + 600
        while time.monotonic() < deadline:
            with endpoint.lock:
                delivered = len({r[2] for r in endpoint.requests if r[3] == 200})
            if delivered >= total:
                break
            time.sleep(0.2)
        server.shutdown()
        report(endpoint, back, total, args)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def report(endpoint, back, total, args):
    reqs = sorted(endpoint.requests)
    first = {}
    for t, device, _, _ in reqs:
        first.setdefault(device, t - back)
    firsts = sorted(first.values())
    ok = [r for r in reqs if r[3] == 200]
    delivered = len({r[2] for r in ok})
    per_second = {}
    for t, *_ in reqs:
        per_second[int(t - back)] = per_second.get(int(t - back), 0) + 1
    busy = [r for r in reqs if r[3] == 503]
    # A request that arrives within a second of the 503 was already on its way (the agent
    # keeps up to its window in flight); one later and inside the 5 s was sent inside it.
    inside = in_flight = 0
    held = {}
    for t, device, _, status in reqs:
        if device in held and held[device][0] < t < held[device][1]:
            if t - held[device][0] <= 1.0:
                in_flight += 1
            else:
                inside += 1
        if status == 503 and (device not in held or t >= held[device][1]):
            held[device] = (t, t + 5.0)
    drained = (ok[-1][0] - back) if ok else float("nan")
    print(f"fleet: {args.agents} agents x {args.events} events, outage {args.outage:.0f} s, "
          f"capacity {args.capacity or 'unlimited'} req/s, {os.path.basename(args.binary)}")
    if firsts:
        print(f"fleet: first request after the return: min {firsts[0]:.2f} s, median {statistics.median(firsts):.2f} s, "
              f"max {firsts[-1]:.2f} s ({len(firsts)} of {args.agents} robots)")
    print(f"fleet: delivered {delivered} of {total}, duplicates {len(ok) - delivered}, drained {drained:.1f} s after the return")
    print(f"fleet: peak {max(per_second.values(), default=0)} requests/s, peak {endpoint.peak_open} connections open")
    share = 100.0 * len(busy) / len(reqs) if reqs else 0.0
    print(f"fleet: 503 answers {len(busy)} ({share:.1f} % of {len(reqs)} requests), requests sent inside a Retry-After {inside} "
          f"(and {in_flight} already in flight when it was given)")


if __name__ == "__main__":
    main()
