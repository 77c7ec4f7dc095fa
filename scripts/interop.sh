#!/usr/bin/env bash
# Interop check against receivers nobody here wrote (see scripts/interop.py):
# COUNT QoS 1 mission messages published with mosquitto_pub go through the agent to three
# subscriptions (standard / sha256 with header_prefix X-RoboTrace and gzip bodies / stripe
# with PUT), and every request must verify with the standardwebhooks and stripe libraries,
# GitHub's sha256= scheme (over the gzip bytes as sent), and the README's Python and Node
# snippets.
#
# usage: scripts/interop.sh [FLEETHOOK_BINARY] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/fleethook}")
COUNT=${2:-200}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

if ! python3 -c "import standardwebhooks, stripe" 2>/dev/null; then
    # A venv of our own: Debian's Python refuses a system-wide pip install.
    VENV="$PWD/target/pyenv"
    [ -x "$VENV/bin/python3" ] || python3 -m venv "$VENV"
    "$VENV/bin/python3" -c "import standardwebhooks, stripe" 2>/dev/null || "$VENV/bin/python3" -m pip install -q standardwebhooks stripe
    export PATH="$VENV/bin:$PATH"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BROKER=$(port); P1=$(port); P2=$(port); P3=$(port)
SECRET=$("$BIN" secret)

printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n' "$BROKER" "$WORK" > "$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >/dev/null 2>&1 & PIDS+=($!)
python3 scripts/interop.py "$P1" "$P2" "$P3" "$SECRET" "$WORK/requests.jsonl" > "$WORK/receiver.out" 2>&1 & PIDS+=($!)

cat > "$WORK/fleethook.toml" <<TOML
device_id = "interop-robot"
[mqtt]
url = "mqtt://127.0.0.1:$BROKER"
[storage]
path = "$WORK/outbox.db"
[status]
socket = "$WORK/status.sock"
[heartbeat]
interval = "0s"
[[route]]
topic = "fleet/+/mission"
event = "mission.{/status}"
device_id = "{topic.1}"
[[subscription]]
name = "standard"
url = "http://127.0.0.1:$P1/hooks"
allow_http = true
secret = "$SECRET"
[[subscription]]
name = "github"
url = "http://127.0.0.1:$P2/hooks"
allow_http = true
secret = "$SECRET"
signature = "sha256"
header_prefix = "X-RoboTrace"
compression = "gzip"
[[subscription]]
name = "stripe"
url = "http://127.0.0.1:$P3/hooks"
allow_http = true
secret = "$SECRET"
signature = "stripe"
method = "PUT"
TOML

for _ in $(seq 100); do grep -q ready "$WORK/receiver.out" 2>/dev/null && break; sleep 0.1; done
"$BIN" run --config "$WORK/fleethook.toml" 2> "$WORK/agent.log" & PIDS+=($!)
for _ in $(seq 150); do grep -q "Subscribed to the route topics" "$WORK/agent.log" && break; sleep 0.1; done

START=$(date +%s.%N)
for i in $(seq 1 "$COUNT"); do
    mosquitto_pub -p "$BROKER" -q 1 -t "fleet/agv-$((i % 3))/mission" \
        -m "{\"seq\":$i,\"mission_id\":\"m-$i\",\"status\":\"completed\",\"station\":\"dock-$((i % 7))\"}"
done
WANT=$((COUNT * 3))
for _ in $(seq 600); do
    [ "$(wc -l 2>/dev/null < "$WORK/requests.jsonl" || echo 0)" -ge "$WANT" ] && break
    sleep 0.1
done
END=$(date +%s.%N)
sleep 0.5

# The README's Node snippet over the standard requests.
if command -v node >/dev/null 2>&1; then
    awk '/^```js$/{f=1;next} /^```$/{f=0} f' README.md > "$WORK/verify.js"
    cat >> "$WORK/verify.js" <<JS
const lines = require("fs").readFileSync("$WORK/requests.jsonl", "utf8").trim().split("\n").map(JSON.parse);
const bad = lines.filter((r) => r.receiver === "standard" && !verify("$SECRET", r.headers, Buffer.from(r.body)));
console.log("README Node snippet: " + (lines.filter((r) => r.receiver === "standard").length - bad.length) + " verified, " + bad.length + " rejected");
process.exit(bad.length ? 1 : 0);
JS
    node "$WORK/verify.js"
fi

python3 - "$WORK/requests.jsonl" "$COUNT" "$START" "$END" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
count, secs = int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3])
problems = []
ids = {}
for name, prefix, method in [("standard", "x-fleethook", "POST"), ("github", "x-robotrace", "POST"), ("stripe", "x-fleethook", "PUT")]:
    mine = [r for r in rows if r["receiver"] == name]
    seqs = sorted(json.loads(r["body"])["data"]["seq"] for r in mine)
    if seqs != list(range(1, count + 1)):
        problems.append(f"{name}: got {len(mine)} requests, {len(set(seqs))} distinct of {count}")
    for r in mine:
        body = json.loads(r["body"])
        if not r["ok"]:
            problems.append(f"{name}: rejected: {r['error']}")
        if r["method"] != method:
            problems.append(f"{name}: method {r['method']}")
        if r["encoding"] != ("gzip" if name == "github" else None):
            problems.append(f"{name}: Content-Encoding {r['encoding']}")
        if r["headers"].get(f"{prefix}-delivery") != body["delivery_id"] or r["headers"].get(f"{prefix}-event") != body["type"]:
            problems.append(f"{name}: headers do not match the envelope")
        if body["type"] != "mission.completed" or not body["device_id"].startswith("agv-") or not body["timestamp"].endswith("Z"):
            problems.append(f"{name}: envelope fields wrong: {body}")
        ids.setdefault(body["data"]["seq"], set()).add(body["id"])
if any(len(v) != 1 for v in ids.values()):
    problems.append("an event id differs across subscriptions")
print(f"interop: {len(rows)} requests for {count} messages x 3 subscriptions in {secs:.1f}s; "
      f"{sum(r['ok'] for r in rows)} verified with standardwebhooks / GitHub sha256= / stripe and the README Python snippet")
for p in problems[:20]:
    print("PROBLEM:", p)
sys.exit(1 if problems else 0)
PY
