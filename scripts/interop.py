#!/usr/bin/env python3
"""Receivers nobody here wrote: checks fleethook's signatures with the `standardwebhooks`
and `stripe` libraries, GitHub's documented `sha256=` scheme (over gzip bodies as sent,
then decoded with Python's gzip), and the README's own Python and Node snippets.

Usage: interop.py STANDARD_PORT GITHUB_PORT STRIPE_PORT SECRET OUT.jsonl
Every request is answered 204 if it verifies, 401 if not, and appended to OUT.jsonl.
"""

import gzip
import hashlib
import hmac
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import stripe
from standardwebhooks.webhooks import Webhook

STANDARD_PORT, GITHUB_PORT, STRIPE_PORT = (int(p) for p in sys.argv[1:4])
SECRET, OUT = sys.argv[4], sys.argv[5]
LOCK = threading.Lock()

# The README's Python snippet, exactly as documented.
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SNIPPET = re.search(r"```python\n(.*?)```", README, re.S).group(1)
readme_ns: dict = {}
exec(SNIPPET, readme_ns)  # noqa: S102 - our own documentation
readme_verify = readme_ns["verify"]


def check_standard(headers, body):
    Webhook(SECRET).verify(body, headers)  # raises on a bad signature
    if not readme_verify(SECRET, headers, body):
        raise ValueError("the README's Python snippet rejects it")


def check_github(headers, body):
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, headers.get("x-robotrace-signature", "")):
        raise ValueError("sha256= signature mismatch")


def check_stripe(headers, body):
    stripe.WebhookSignature.verify_header(body.decode(), headers["x-fleethook-signature"], SECRET, tolerance=300)


def handler_for(name, check):
    class Handler(BaseHTTPRequestHandler):
        def handle_one(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                check(headers, body)  # over the body as sent
                ok, error = True, None
            except Exception as e:  # any failure is a rejection
                ok, error = False, repr(e)
            encoding = headers.get("content-encoding")
            if encoding == "gzip":
                body = gzip.decompress(body)
            with LOCK, open(OUT, "a") as f:
                f.write(json.dumps({"receiver": name, "method": self.command, "ok": ok, "error": error,
                                    "encoding": encoding, "headers": headers, "body": body.decode()}) + "\n")
            self.send_response(204 if ok else 401)
            self.end_headers()

        do_POST = do_PUT = handle_one

        def log_message(self, *args):
            pass

    return Handler


servers = [
    ThreadingHTTPServer(("127.0.0.1", STANDARD_PORT), handler_for("standard", check_standard)),
    ThreadingHTTPServer(("127.0.0.1", GITHUB_PORT), handler_for("github", check_github)),
    ThreadingHTTPServer(("127.0.0.1", STRIPE_PORT), handler_for("stripe", check_stripe)),
]
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
