#!/usr/bin/env bash
# bench/slow_hosts.sh: dispatch to a receiver that answers after 100 ms, and
# beside a host that never answers (issue 15, item 3).
#
# On one throwaway server, with receivers on 127.0.0.1 (bench/slow_receiver.py):
#  - the ceiling: a plain libcurl multi client (bench/curl_ceiling.c) posting
#    N payloads to the slow receiver, PARALLEL at once;
#  - the dispatcher draining N pending webhooks to it, with PARALLEL
#    deliveries in flight and allowed per host;
#  - then at a per-host limit of PARALLEL / 2, the same drain alone and
#    beside DEAD_N deliveries to a host that accepts connections and never
#    answers: the slow host's rate should not drop.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-5000}
DEAD_N=${DEAD_N:-1000}
PARALLEL=${PARALLEL:-256}
DELAY_MS=${DELAY_MS:-100}

bench_start "smartconnector.block_private_addresses = off
smartconnector.max_deliveries_in_flight = $PARALLEL
smartconnector.max_connections_per_host = $PARALLEL"
SLOW_PORT=$((BENCH_PORT + 1001))
DEAD_PORT=$((BENCH_PORT + 1002))
receiver_pids=()
start_receiver()
{
	local port=$1 mode=$2 fifo="$BENCH_DIR/receiver.$1"
	mkfifo "$fifo"
	python3 "$src/bench/slow_receiver.py" "$port" "$mode" > "$fifo" 2>> "${SLOW_RECEIVER_LOG:-/dev/null}" &
	receiver_pids+=($!)
	read -r _ < "$fifo"
}
start_receiver "$SLOW_PORT" "$DELAY_MS"
start_receiver "$DEAD_PORT" never
trap 'kill "${receiver_pids[@]}" 2>/dev/null || true; bench_stop' EXIT
SLOW_URL="http://127.0.0.1:$SLOW_PORT/hook"
DEAD_URL="http://127.0.0.1:$DEAD_PORT/hook"

gcc -O2 -o "$BENCH_DIR/curl_ceiling" "$src/bench/curl_ceiling.c" -lcurl

bench_psql >/dev/null <<SQL
CREATE EXTENSION smartconnector;
SELECT smartconnector.create_connector('Slow', 'slow', status => 'operational',
	execution_ended_webhook_url => '$SLOW_URL', webhook_secret => smartconnector.generate_webhook_secret());
SELECT smartconnector.create_connector('Dead', 'dead', status => 'operational',
	execution_ended_webhook_url => '$DEAD_URL', webhook_secret => smartconnector.generate_webhook_secret());
SQL

per_host()
{
	bench_psql >/dev/null <<SQL
ALTER SYSTEM SET smartconnector.max_connections_per_host = $1;
SELECT pg_reload_conf();
SQL
	until [[ $(bench_psql -c "SHOW smartconnector.max_connections_per_host") == "$1" ]]; do sleep 0.1; done
}

# Release every pending delivery at once; print the slow host's deliveries
# per second from the release to its last delivery.
drain_slow()
{
	bench_psql -c "BEGIN; UPDATE smartconnector.delivery SET next_attempt_at = clock_timestamp(), created_at = clock_timestamp(); SELECT smartconnector_internal.wake_dispatcher_at_commit(); COMMIT;" >/dev/null
	until [[ $(bench_psql -c "SELECT count(*) = 0 FROM smartconnector.delivery d JOIN smartconnector.connector c ON c.id = d.connector_id WHERE c.api_name = 'slow' AND d.state = 'pending'") == t ]]; do
		sleep 0.2
	done
	bench_psql -F ' ' -c "SELECT count(*) FILTER (WHERE d.state = 'delivered'),
		round(count(*) / extract(epoch FROM max(d.delivered_at) - min(d.created_at)))
		FROM smartconnector.delivery d JOIN smartconnector.connector c ON c.id = d.connector_id
		WHERE c.api_name = 'slow'"
}

echo "== smartconnector dispatch to slow hosts =="
bench_conditions
echo "receivers: bench/slow_receiver.py (204 after $DELAY_MS ms; a host that never answers); payload: execution_metadata, signed"
echo

bench_backlog slow "$N"
bench_psql -c "SELECT payload::text FROM smartconnector.delivery ORDER BY id" > "$BENCH_DIR/payloads.jsonl"
chmod 644 "$BENCH_DIR/payloads.jsonl"
read -r _ _ ceiling _ < <("$BENCH_DIR/curl_ceiling" "$SLOW_URL" "$BENCH_DIR/payloads.jsonl" "$PARALLEL")
read -r full_delivered full_rate < <(drain_slow)

half=$((PARALLEL / 2))
per_host "$half"
bench_psql -c "TRUNCATE smartconnector.execution CASCADE" >/dev/null
bench_backlog slow "$N"
read -r alone_delivered alone_rate < <(drain_slow)
bench_psql -c "TRUNCATE smartconnector.execution CASCADE" >/dev/null
bench_backlog slow "$N"
bench_backlog dead "$DEAD_N"
read -r beside_delivered beside_rate < <(drain_slow)
dead_in_flight=$(bench_psql -c "SELECT count(*) FROM smartconnector.delivery d JOIN smartconnector.connector c ON c.id = d.connector_id WHERE c.api_name = 'dead' AND d.state = 'pending' AND d.attempts = 0")

printf "%-66s %10s %s\n" "measure" "value" "ratio"
printf "%-66s %10s %s\n" "ideal: $PARALLEL in flight / $DELAY_MS ms (req/s)" "$((PARALLEL * 1000 / DELAY_MS))" ""
printf "%-66s %10s %s\n" "plain libcurl multi client, $N posts, $PARALLEL at once (req/s)" "$ceiling" "1.00"
printf "%-66s %10s %s\n" "dispatcher, $N webhooks, $PARALLEL in flight and per host (/s)" "$full_rate" \
	"$(awk -v a="$full_rate" -v b="$ceiling" 'BEGIN {printf "%.2f of ceiling", a/b}')"
printf "%-66s %10s\n" "  delivered / failed" "$full_delivered / $((N - full_delivered))"
printf "%-66s %10s %s\n" "at $half per host, the slow host alone (/s)" "$alone_rate" ""
printf "%-66s %10s %s\n" "at $half per host, beside $DEAD_N to a host that never answers (/s)" "$beside_rate" \
	"$(awk -v a="$beside_rate" -v b="$alone_rate" 'BEGIN {printf "%.2f of alone", a/b}')"
printf "%-66s %10s\n" "  delivered / failed; dead host's first attempts still open" "$beside_delivered / $((N - beside_delivered)); $dead_in_flight"
