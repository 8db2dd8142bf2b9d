#!/usr/bin/env bash
# make demo: validate the example fleet, start the embedded fleet (`fleet up`), plan and apply fleet.yaml.example,
# enroll two local agents in its local pool (pool-local-main of tenant fin-prod, key `local-dev`), show
# `fleet list`, simulate a dispatch with `fleet route test`, then submit real sessions to project my-fintech-app
# (`fleet submit`, one with --wait), follow them to the end and show them (`fleet sessions list`, `… show`).
# The fleet keeps running afterwards; `fleet down` (or `make down`) stops it, agents included.
# (Run through `make demo`, which puts .venv/bin on PATH.) Idempotent: a second run reuses what runs.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR="${FLEET_STATE_DIR:-.fleet}"
export FLEET_STATE_DIR="$STATE_DIR"
# The example's keys read their secrets from these variables at apply (only keyed digests are stored). Secrets must
# be random (at least 128 bits): the demo makes them once and keeps them, mode 0600, for its next runs.
SECRETS_FILE="$STATE_DIR/demo-secrets.env"
if [ ! -f "$SECRETS_FILE" ]; then
  mkdir -p "$STATE_DIR"
  (umask 077 && python3 -c 'import secrets
print("FLEET_KEY_LOCAL_DEV=" + secrets.token_hex(32))
print("FLEET_KEY_HEALTH_GPU=" + secrets.token_hex(32))' >"$SECRETS_FILE")
fi
set -a
. "$SECRETS_FILE"
set +a
SECRET="$FLEET_KEY_LOCAL_DEV"

echo "== fleet validate -f fleet.yaml.example"
fleet validate -f fleet.yaml.example

echo
echo "== fleet up"
fleet up

echo
echo "== fleet plan -f fleet.yaml.example --summary"
fleet plan -f fleet.yaml.example --summary

echo
echo "== fleet apply -f fleet.yaml.example --auto-approve"
# Generated key secrets (key ci-runners) go to a 0600 file instead of the terminal.
fleet apply -f fleet.yaml.example --auto-approve --summary --reveal-keys-to "$STATE_DIR/generated-keys.txt"

echo
echo "== two local agents"
fleet list --json >"$STATE_DIR/demo-hosts.json"
for n in 1 2; do
  dir="$STATE_DIR/agents/agent-$n"
  # An agent whose host was revoked or removed (`fleet hosts revoke|rm`) can never connect again with its identity:
  # keep its old state dir aside and enroll it afresh, as a new host.
  if [ -f "$dir/identity.json" ] && ! python3 - "$dir/identity.json" "$STATE_DIR/demo-hosts.json" <<'PY'
import json, sys
mid = json.load(open(sys.argv[1])).get("machine_id")
hosts = {h["id"]: h["status"] for h in json.load(open(sys.argv[2]))}
sys.exit(0 if hosts.get(mid, "revoked") != "revoked" else 1)
PY
  then
    if [ -f "$dir/agent.pid" ]; then kill "$(cat "$dir/agent.pid")" 2>/dev/null || true; fi
    old="$dir.retired-$(date +%s)"
    mv "$dir" "$old"
    echo "agent-$n's host was revoked or removed: its old state is in $old; enrolling agent-$n again as a new host"
  fi
  mkdir -p "$dir"
  if [ -f "$dir/agent.pid" ] && tr '\0' ' ' <"/proc/$(cat "$dir/agent.pid")/cmdline" 2>/dev/null | grep -q "agent run"; then
    echo "agent-$n already running (pid $(cat "$dir/agent.pid"))"
    continue
  fi
  # The secret goes through the environment (FLEET_ENROLL_KEY), never the command line, where `ps` shows it.
  FLEET_ENROLL_KEY="$SECRET" nohup fleet agent run --state-dir "$dir" --hostname "demo-agent-$n" \
    --pool pool-local-main --labels tier=dev >"$dir/stdout.log" 2>&1 &
  echo "started agent-$n (pid $!, state dir $dir, log $dir/agent.log)"
done

echo
echo "== waiting until both agents are active"
active=no
for _ in $(seq 1 100); do
  if fleet list --json | python3 -c 'import json, sys
hosts = json.load(sys.stdin)
names = {h["hostname"] for h in hosts if h["status"] == "active"}
sys.exit(0 if {"demo-agent-1", "demo-agent-2"} <= names else 1)'; then
    active=yes
    break
  fi
  sleep 0.3
done
if [ "$active" != yes ]; then
  echo "error: the two demo agents are not both active after 30 s (see $STATE_DIR/agents/agent-*/agent.log," \
    "and \`fleet list\`)" >&2
  exit 1
fi

echo
echo "== fleet list"
fleet list

echo
echo "== fleet route test my-fintech-app"
fleet route test my-fintech-app -f fleet.yaml.example

echo
echo "== the sessions' sandbox: each runs in a slot with a uid and namespaces of its own (fleet show)"
agent1=$(fleet list --json | python3 -c 'import json, sys
print(next(h["id"] for h in json.load(sys.stdin) if h["hostname"] == "demo-agent-1"))')
fleet show "$agent1" | grep -E '^(Sandbox|Credential socket):'
# A session is an AI agent's code: it tries to read its host's credential, and leaves a process behind.
PROBE="echo \"session uid \$(id -u)\"; cat '$(cd "$STATE_DIR" && pwd)/agents/agent-1/host.creds' 2>&1 | head -c 120; echo; setsid nohup sleep 600.5 >/dev/null 2>&1 &"
echo "== fleet submit --wait -- sh -c 'id -u; cat .../agents/agent-1/host.creds; setsid nohup sleep 600.5 &'"
probe_out=$(fleet submit --project my-fintech-app --timeout 30 --wait -- sh -c "$PROBE")
echo "$probe_out"
if echo "$probe_out" | grep -q -- "-----BEGIN"; then
  echo "error: a session read its host's credential: the sandbox is not working" >&2
  exit 1
fi
if pgrep -f "sleep 600.5" >/dev/null; then
  echo "error: a process the session left behind outlived it" >&2
  exit 1
fi
echo "the session could not read the credential, and nothing it started outlived it"

# Sessions. my-fintech-app routes to pool-local-main while one of its hosts has a free slot (2 agents x 4 slots),
# else to its fallback pool-cloud-e2b, which has no hosts here: a session would then wait in the queue until a
# local slot opens. These five take at most five of the eight slots at once: they all run on the local agents.
# Each has a --timeout, so that nothing can run on forever.
JOB='echo "hello from session $FLEET_SESSION_ID of $FLEET_PROJECT (attempt $FLEET_ATTEMPT)"; sleep 1'
echo
echo "== fleet submit --project my-fintech-app -- sh -c '...'   (x4: prints the session ID once it is stored)"
ids=()
said="$STATE_DIR/demo-submit.err"
for _ in 1 2 3 4; do
  # the ID on stdout; where it went ("assigned to …") on stderr: one line for both
  if ! id=$(fleet submit --project my-fintech-app --timeout 30 -- sh -c "$JOB" 2>"$said"); then
    cat "$said" >&2
    exit 1
  fi
  ids+=("$id")
  echo "$id  $(cat "$said")"
done

echo
echo "== fleet submit --project my-fintech-app --wait -- sh -c '...; exit 3'"
echo "   (streams the output, then exits with the command's exit code: 3 on purpose)"
set +e
fleet submit --project my-fintech-app --timeout 30 --wait -- \
  sh -c 'for i in 1 2 3; do echo "step $i of 3 (session $FLEET_SESSION_ID)"; sleep 0.3; done; exit 3'
code=$?
set -e
echo "fleet submit --wait exited with $code"
if [ "$code" != 3 ]; then
  echo "error: expected the command's exit code 3 from \`fleet submit --wait\`, got $code" >&2
  exit 1
fi

echo
echo "== fleet sessions logs --follow <id>   (each of the four, until it ends)"
for id in "${ids[@]}"; do
  if ! timeout 60 fleet sessions logs --follow "$id"; then
    echo "error: session $id did not end within 60 s (see \`fleet sessions show $id\`, \`fleet list\`)" >&2
    exit 1
  fi
done

echo
echo "== fleet sessions list --project my-fintech-app --limit 5   (the newest five: this run's)"
fleet sessions list --project my-fintech-app --limit 5
if ! fleet sessions list --json --project my-fintech-app | python3 -c 'import json, sys
sessions = json.load(sys.stdin)["sessions"]
wanted = sys.argv[1:]
got = {s["id"]: s for s in sessions}
bad = [i for i in wanted if i not in got or got[i]["phase"] != "succeeded" or got[i]["pool"] != "pool-local-main"]
sys.exit(1 if bad else 0)' "${ids[@]}"; then
  echo "error: not every session of this run succeeded on pool-local-main (see \`fleet sessions list\`)" >&2
  exit 1
fi

echo
echo "== fleet sessions show ${ids[0]}"
fleet sessions show "${ids[0]}"

echo
echo "The fleet keeps running. Try (after \`. .venv/bin/activate\`):"
echo "  fleet list --json | jq '[.[] | select(.status == \"active\")]'"
echo "  fleet show <machine-id or prefix>"
echo "  fleet route show my-fintech-app -f fleet.yaml.example"
echo "  fleet plan -f fleet.yaml.example --format markdown"
echo "  fleet hosts pause <machine-id>       fleet agent status --state-dir $STATE_DIR/agents/agent-1"
echo "  fleet submit -p my-fintech-app --wait -- python3 -c 'print(42)'      fleet sessions list"
echo "Stop everything (agents, fleet server, nats-server) with:  make down   (or: .venv/bin/fleet down)"
