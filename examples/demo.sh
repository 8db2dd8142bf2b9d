#!/usr/bin/env bash
# make demo: validate the example fleet, start the embedded fleet (`fleet up`), enroll two local agents in the
# example's local pool (pool-local-main of tenant fin-prod, key `local-dev`), and show `fleet list`.
# The fleet keeps running afterwards; `fleet down` (or `make down`) stops it, agents included.
# (Run through `make demo`, which puts .venv/bin on PATH.) Idempotent: a second run reuses what runs.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR="${FLEET_STATE_DIR:-.fleet}"
export FLEET_STATE_DIR="$STATE_DIR"
SECRET="${FLEET_KEY_LOCAL_DEV:-local-dev-demo-secret}"

echo "== fleet validate -f fleet.yaml.example"
fleet validate -f fleet.yaml.example

echo
echo "== fleet up"
fleet up

echo
echo "== enrollment key local-dev (tenant fin-prod, pool pool-local-main)"
# Until `fleet apply` writes the keys of fleet.yaml, create the example's key directly (only its hash is stored).
fleet keys create local-dev --tenant fin-prod --pool pool-local-main \
  --labels region=eu-west,tier=dev --models claude-3-5-sonnet,claude-3-5-haiku \
  --max-uses 10 --expires 2030-01-01T00:00:00Z --secret "$SECRET" >/dev/null
fleet keys list

echo
echo "== two local agents"
for n in 1 2; do
  dir="$STATE_DIR/agents/agent-$n"
  mkdir -p "$dir"
  if [ -f "$dir/agent.pid" ] && tr '\0' ' ' <"/proc/$(cat "$dir/agent.pid")/cmdline" 2>/dev/null | grep -q "agent run"; then
    echo "agent-$n already running (pid $(cat "$dir/agent.pid"))"
    continue
  fi
  nohup fleet agent run --state-dir "$dir" --hostname "demo-agent-$n" --pool pool-local-main \
    --labels tier=dev --enroll-key "$SECRET" >"$dir/stdout.log" 2>&1 &
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
echo "The fleet keeps running. Try:"
echo "  fleet list --json | jq '[.[] | select(.status == \"active\")]'"
echo "  fleet show <machine-id or prefix>"
echo "  fleet hosts pause <machine-id>       fleet agent status --state-dir $STATE_DIR/agents/agent-1"
echo "Stop everything (agents, fleet server, nats-server) with:  fleet down   (or: make down)"
