#!/usr/bin/env bash
# bench/dispatch.sh: completion dispatch throughput, latency and memory.
#
# On one throwaway server and one nginx receiver on 127.0.0.1 (204 to every
# POST), in one run:
#  - the ceiling: a plain libcurl multi client (bench/curl_ceiling.c, no
#    database) posting the same N payloads with the same parallelism;
#  - the dispatcher draining N pending webhook deliveries (N = 20,000);
#  - commit-to-receipt latency of single completions on an idle system;
#  - the dispatcher's RSS before and after MEMORY_N deliveries (100,000);
#  - first, on the fresh server: HISTORY_N (4,000) executions run and
#    delivered one by one, then a burst of REDELIVER_N (3,000) redeliver()
#    calls in one statement.  The dispatcher keeps its plans for its
#    lifetime and, in production, makes them on an empty outbox, until an
#    ANALYZE replans them: this phase runs on such plans (the later phases
#    TRUNCATE and ANALYZE, which replan).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-20000}
MEMORY_N=${MEMORY_N:-100000}
HISTORY_N=${HISTORY_N:-4000}
REDELIVER_N=${REDELIVER_N:-3000}
PARALLEL=${PARALLEL:-8}

bench_start "smartconnector.block_private_addresses = off
smartconnector.max_connections_per_host = $PARALLEL"
bench_start_nginx
URL="http://127.0.0.1:$HTTP_PORT/hook"

gcc -O2 -o "$BENCH_DIR/curl_ceiling" "$src/bench/curl_ceiling.c" -lcurl

bench_psql >/dev/null <<SQL
CREATE EXTENSION smartconnector;
SELECT smartconnector.create_connector('Bench', 'bench', status => 'operational',
	execution_ended_webhook_url => '$URL',
	webhook_secret => smartconnector.generate_webhook_secret());
SQL

# history made as in production, from an empty outbox; then redeliver() a burst of it
printf "SELECT smartconnector.trigger('bench') AS id \\\\gset\nSELECT smartconnector.claim('bench');\nSELECT smartconnector.finish(:id);\n" > "$BENCH_DIR/stream.sql"
chmod 644 "$BENCH_DIR/stream.sql"
bench_pgbench -n -c 1 -t "$HISTORY_N" -f "$BENCH_DIR/stream.sql" >/dev/null 2>&1
until [[ $(bench_psql -c "SELECT count(*) = $HISTORY_N FROM smartconnector.delivery WHERE state = 'delivered'") == t ]]; do sleep 0.2; done
bench_psql -c "SELECT count(smartconnector.redeliver(id)) FROM (SELECT id FROM smartconnector.delivery ORDER BY id LIMIT $REDELIVER_N) d" >/dev/null
until [[ $(bench_psql -c "SELECT count(*) = 0 FROM smartconnector.delivery WHERE state = 'pending'") == t ]]; do sleep 0.2; done
read -r re_delivered re_rate < <(bench_psql -F ' ' -c "
	SELECT count(*) FILTER (WHERE state = 'delivered'),
		   round(count(*) / extract(epoch FROM max(delivered_at) - min(created_at)))
	  FROM (SELECT * FROM smartconnector.delivery ORDER BY id LIMIT $REDELIVER_N) d")

prepare_backlog()
{
	bench_psql -c "TRUNCATE smartconnector.execution CASCADE" >/dev/null
	bench_backlog bench "$1"
}

# Release the backlog; print deliveries per second from the release's commit
# to the last delivery.
drain()
{
	local n=$1
	bench_psql -c "BEGIN; UPDATE smartconnector.delivery SET next_attempt_at = clock_timestamp(), created_at = clock_timestamp(); SELECT smartconnector_internal.wake_dispatcher_at_commit(); COMMIT;" >/dev/null
	until [[ $(bench_psql -c "SELECT count(*) = $n FROM smartconnector.delivery WHERE state <> 'pending'") == t ]]; do
		sleep 0.2
	done
	bench_psql -c "SELECT count(*) FILTER (WHERE state = 'delivered') || ' ' ||
		round($n / extract(epoch FROM max(delivered_at) - min(created_at)))
		FROM smartconnector.delivery"
}

dispatcher_rss()
{
	local pid
	pid=$(bench_psql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'smartconnector dispatcher'")
	# private memory only: VmRSS also counts the shared buffers it touched
	awk '/RssAnon/ {print $2}' "/proc/$pid/status"
}

echo "== smartconnector dispatch benchmark =="
bench_conditions
echo "receiver: nginx (1 worker, 204); parallel transfers per host: $PARALLEL; payload: execution_metadata (~600 bytes), signed"
echo

prepare_backlog "$N"
bench_psql -c "SELECT payload::text FROM smartconnector.delivery ORDER BY id" > "$BENCH_DIR/payloads.jsonl"
chmod 644 "$BENCH_DIR/payloads.jsonl"
read -r c_n c_secs ceiling c_failed < <("$BENCH_DIR/curl_ceiling" "$URL" "$BENCH_DIR/payloads.jsonl" "$PARALLEL")
read -r delivered rate < <(drain "$N")

# idle latency: 200 completions 20 ms apart
bench_psql -c "TRUNCATE smartconnector.execution CASCADE" >/dev/null
printf "SELECT smartconnector.trigger('bench') AS id \\\\gset\nSELECT smartconnector.claim('bench');\nSELECT smartconnector.finish(:id);\n\\\\sleep 20 ms\n" > "$BENCH_DIR/stream.sql"
chmod 644 "$BENCH_DIR/stream.sql"
bench_pgbench -n -c 1 -t 200 -f "$BENCH_DIR/stream.sql" >/dev/null 2>&1
until [[ $(bench_psql -c "SELECT count(*) = 200 FROM smartconnector.delivery WHERE state = 'delivered'") == t ]]; do sleep 0.2; done
read -r lat50 lat99 < <(bench_psql -F ' ' -c "
	SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::numeric, 2),
		   round(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)::numeric, 2)
	  FROM smartconnector.delivery")

# memory over MEMORY_N deliveries
rss_before=$(dispatcher_rss)
prepare_backlog "$MEMORY_N"
read -r mem_delivered mem_rate < <(drain "$MEMORY_N")
rss_after=$(dispatcher_rss)

printf "%-60s %12s %s\n" "measure" "value" "ratio"
printf "%-60s %12s %s\n" "plain libcurl multi client, $N posts (req/s, the ceiling)" "$ceiling" "1.00"
printf "%-60s %12s %s\n" "dispatcher draining $N pending webhooks (deliveries/s)" "$rate" \
	"$(awk -v a="$rate" -v b="$ceiling" 'BEGIN {printf "%.2f of ceiling", a/b}')"
printf "%-60s %12s\n" "  delivered / failed" "$delivered / $((N - delivered))"
printf "%-60s %12s\n" "commit-to-receipt latency, idle, median (ms)" "$lat50"
printf "%-60s %12s\n" "commit-to-receipt latency, idle, p99 (ms)" "$lat99"
printf "%-60s %12s\n" "dispatcher private RSS (RssAnon) before (kB)" "$rss_before"
printf "%-60s %12s %s\n" "dispatcher private RSS after $MEMORY_N more deliveries (kB)" "$rss_after" \
	"$(awk -v a="$rss_after" -v b="$rss_before" 'BEGIN {printf "%+d kB", a-b}')"
printf "%-60s %12s\n" "  ($MEMORY_N-delivery drain rate, deliveries/s)" "$mem_rate"
printf "%-60s %12s %s\n" "redeliver() burst of $REDELIVER_N, $HISTORY_N of history (deliveries/s)" "$re_rate" \
	"$(awk -v a="$re_rate" -v b="$rate" 'BEGIN {printf "%.2f of the fresh drain", a/b}')"
printf "%-60s %12s\n" "  delivered / failed" "$re_delivered / $((REDELIVER_N - re_delivered))"
