#!/usr/bin/env bash
# make demo: validate the example fleet, start the embedded fleet (`fleet up`), plan and apply fleet.yaml.example,
# enroll two local agents in its local pool (pool-local-main of tenant fin-prod, key `local-dev`), show
# `fleet list` and simulate a dispatch with `fleet route test`.
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
for n in 1 2; do
  dir="$STATE_DIR/agents/agent-$n"
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
for _ in $(seq 1 100); do
  if fleet list --json | python3 -c 'import json, sys
hosts = json.load(sys.stdin)
names = {h["hostname"] for h in hosts if h["status"] == "active"}
sys.exit(0 if {"demo-agent-1", "demo-agent-2"} <= names else 1)'; then
    break
  fi
  sleep 0.3
done

echo
echo "== fleet list"
fleet list

echo
echo "== fleet route test my-fintech-app"
fleet route test my-fintech-app -f fleet.yaml.example

echo
echo "The fleet keeps running. Try (after \`. .venv/bin/activate\`):"
echo "  fleet list --json | jq '[.[] | select(.status == \"active\")]'"
echo "  fleet show <machine-id or prefix>"
echo "  fleet route show my-fintech-app -f fleet.yaml.example"
echo "  fleet plan -f fleet.yaml.example --format markdown"
echo "  fleet hosts pause <machine-id>       fleet agent status --state-dir $STATE_DIR/agents/agent-1"
echo "Stop everything (agents, fleet server, nats-server) with:  make down   (or: .venv/bin/fleet down)"
