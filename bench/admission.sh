#!/usr/bin/env bash
# bench/admission.sh: admission cost and trigger-to-start latency.
#
# Measures, on one throwaway server and in one run:
#  - the commit ceiling: pgbench single-row INSERT rate (1 client);
#  - executions per second of a no-op handler draining a backlog of 100, and
#    the first 1,000 of a backlog of 100,000 (admission cost must not grow
#    with the backlog: the cost ratio is the backlog-100 rate over the
#    backlog-100,000 rate; both after a warm-up drain that starts the
#    executors);
#  - trigger-to-start latency (queued_at to started_at) of single triggers
#    on an idle system, median and p99.
# All times come from the execution rows' own timestamps (clock_timestamp()).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKERS=${WORKERS:-2}
bench_start "smartconnector.max_workers = $WORKERS"
bench_psql <<SQL
CREATE EXTENSION smartconnector;
CREATE FUNCTION public.noop(ctx jsonb) RETURNS void LANGUAGE sql AS \$\$ SELECT \$\$;
SELECT smartconnector.create_connector('No-op', 'noop', handler => 'public.noop(jsonb)',
	status => 'operational', max_concurrent_executions => 0);
SQL

# Queue N with the connector paused, release it, wait for the first M to end;
# prints executions per second over those M (first start to last end).
drain()
{
	local backlog=$1 measured=$2
	bench_psql -c "TRUNCATE smartconnector.execution CASCADE" \
		-c "SELECT smartconnector.set_max_concurrent_executions('noop', 0)" \
		-c "SELECT count(smartconnector.trigger('noop')) FROM generate_series(1, $backlog)" \
		-c "VACUUM ANALYZE smartconnector.execution" >/dev/null
	bench_psql -c "SELECT smartconnector.set_max_concurrent_executions('noop', $WORKERS)" >/dev/null
	until [[ $(bench_psql -c "SELECT count(*) >= $measured FROM smartconnector.execution WHERE state = 'success'") == t ]]; do
		sleep 0.2
	done
	bench_psql -c "SELECT smartconnector.set_max_concurrent_executions('noop', 0)" >/dev/null
	bench_psql -c "
		WITH first AS (SELECT * FROM smartconnector.execution WHERE state = 'success' ORDER BY id LIMIT $measured)
		SELECT round(count(*) / extract(epoch FROM max(ended_at) - min(started_at)))::int FROM first"
}

echo "== smartconnector admission benchmark =="
bench_conditions
echo "executor workers: $WORKERS, no-op handler, limit $WORKERS"
echo

ceiling=$(bench_insert_ceiling 1 5)
# warm-up: the first release also starts the executor workers, which would
# otherwise count against the short backlog-100 drain only
drain 100 100 >/dev/null
rate_small=$(drain 100 100)
rate_big=$(drain 100000 1000)

# idle latency: 200 single triggers, 20 ms apart, each landing on an idle system
bench_psql -c "TRUNCATE smartconnector.execution CASCADE" \
	-c "SELECT smartconnector.set_max_concurrent_executions('noop', $WORKERS)" >/dev/null
printf "SELECT smartconnector.trigger('noop');\n\\\\sleep 20 ms\n" > "$BENCH_DIR/trigger.sql"
chmod 644 "$BENCH_DIR/trigger.sql"
bench_pgbench -n -c 1 -t 200 -f "$BENCH_DIR/trigger.sql" >/dev/null 2>&1
until [[ $(bench_psql -c "SELECT count(*) = 200 FROM smartconnector.execution WHERE state = 'success'") == t ]]; do
	sleep 0.2
done
read -r p50 p99 < <(bench_psql -F ' ' -c "
	SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
		   round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2)
	  FROM (SELECT extract(epoch FROM started_at - queued_at) * 1000 AS ms
			  FROM smartconnector.execution) s")

printf "%-58s %10s %s\n" "measure" "value" "ratio"
printf "%-58s %10s %s\n" "pgbench single-row INSERT, 1 client (tps, the ceiling)" "$ceiling" "1.00"
printf "%-58s %10s %s\n" "executions/s, backlog 100 (all 100)" "$rate_small" \
	"$(awk -v a="$rate_small" -v b="$ceiling" 'BEGIN {printf "%.2f of ceiling", a/b}')"
printf "%-58s %10s %s\n" "executions/s, backlog 100,000 (first 1,000)" "$rate_big" \
	"$(awk -v a="$rate_big" -v c="$ceiling" 'BEGIN {printf "%.2f of ceiling", a/c}')"
printf "%-58s %10s %s\n" "admission cost at 100,000 queued relative to 100 queued" \
	"$(awk -v a="$rate_big" -v b="$rate_small" 'BEGIN {printf "%.2fx", b/a}')" "(target: at most 1.5x)"
printf "%-58s %10s\n" "trigger-to-start latency, idle, median (ms)" "$p50"
printf "%-58s %10s\n" "trigger-to-start latency, idle, p99 (ms)" "$p99"
