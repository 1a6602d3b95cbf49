#!/usr/bin/env bash
# The tests talk to a real Redis at 127.0.0.1:6379. Start one (no persistence) if none answers.
set -euo pipefail
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then exit 0; fi
echo "starting redis-server on 127.0.0.1:6379"
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/split-infer-redis.log"
for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && exit 0; sleep 0.1; done
echo "redis-server did not come up" >&2; exit 1
