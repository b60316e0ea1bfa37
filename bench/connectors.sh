#!/usr/bin/env bash
# bench/connectors.sh: admission as the number of connectors with work grows.
#
# On one throwaway server, in one run, the same total work (N no-op
# executions, 8 executors, no webhook) spread over 1 connector at limit 8,
# and over 100, 1,000 and 10,000 connectors at limit 1; each queued while
# paused and released in one commit, timed from the release to the end of
# the last execution.  Prints executions per second and the ratio to the
# one-connector rate of the same run.  Then, with 10,000 connectors and a
# million ended executions, the time of the overview and of
# recent_executions.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-10000}
WORKERS=${WORKERS:-8}
HISTORY=${HISTORY:-1000000}

bench_start "smartconnector.max_workers = $WORKERS
smartconnector.executor_idle_timeout = 600
smartconnector.history_retention = 0"

bench_psql >/dev/null <<SQL
CREATE EXTENSION smartconnector;
CREATE FUNCTION public.noop(ctx jsonb) RETURNS void LANGUAGE sql AS \$\$ SELECT \$\$;
SELECT count(smartconnector.create_connector('C ' || i, 'c_' || i, handler => 'public.noop(jsonb)',
	status => 'operational', max_concurrent_executions => 0))
  FROM generate_series(1, 10000) i;
SQL

# Queue N executions over the first $1 connectors (paused), release them at
# limit $2 in one commit; print executions per second to the last end.
# Each scenario starts vacuumed: pausing and releasing 10,000 connectors
# leaves 20,000 dead connector rows, and without the vacuum the figure says
# more about the order of the scenarios than about admission (10,000
# connectors measured 0.53-0.63 after the others, 0.87 vacuumed).
admit_rate()
{
	local connectors=$1 limit=$2
	bench_psql >/dev/null <<SQL
TRUNCATE smartconnector.execution CASCADE;
UPDATE smartconnector.connector SET max_concurrent_executions = 0;
SELECT count(smartconnector_internal.enqueue(c.id, '{}', false, false, 'api', 'bench'))
  FROM (SELECT id FROM smartconnector.connector ORDER BY id LIMIT $connectors) c,
	   generate_series(1, $N / $connectors);
VACUUM ANALYZE;
SQL
	local released
	released=$(bench_psql -c "UPDATE smartconnector.connector SET max_concurrent_executions = $limit
		WHERE id IN (SELECT id FROM smartconnector.connector ORDER BY id LIMIT $connectors);
		SELECT clock_timestamp()" | tail -n 1)
	until [[ $(bench_psql -c "SELECT count(*) = 0 FROM smartconnector.execution WHERE state IN ('queued', 'running')") == t ]]; do
		sleep 0.2
	done
	bench_psql -c "SELECT round(count(*) / extract(epoch FROM max(ended_at) - '$released'::timestamptz))
		FROM smartconnector.execution"
}

# One connector at limit 8 with N executions while the other 9,999 are paused
# with one queued execution each: what paused backlogs cost the admissions.
among_paused()
{
	bench_psql >/dev/null <<SQL
TRUNCATE smartconnector.execution CASCADE;
UPDATE smartconnector.connector SET max_concurrent_executions = 0;
SELECT count(smartconnector_internal.enqueue(c.id, '{}', false, false, 'api', 'bench'))
  FROM smartconnector.connector c WHERE c.id > (SELECT min(id) FROM smartconnector.connector);
SELECT count(smartconnector_internal.enqueue(c.id, '{}', false, false, 'api', 'bench'))
  FROM (SELECT min(id) AS id FROM smartconnector.connector) c, generate_series(1, $N);
VACUUM ANALYZE;
SQL
	local released
	released=$(bench_psql -c "UPDATE smartconnector.connector SET max_concurrent_executions = 8
		WHERE id = (SELECT min(id) FROM smartconnector.connector);
		SELECT clock_timestamp()" | tail -n 1)
	until [[ $(bench_psql -c "SELECT count(*) = 0 FROM smartconnector.execution
		WHERE connector_id = (SELECT min(id) FROM smartconnector.connector) AND state IN ('queued', 'running')") == t ]]; do
		sleep 0.2
	done
	bench_psql -c "SELECT round(count(*) / extract(epoch FROM max(ended_at) - '$released'::timestamptz))
		FROM smartconnector.execution WHERE connector_id = (SELECT min(id) FROM smartconnector.connector)"
}

echo "== smartconnector admission by number of connectors =="
bench_conditions
echo "executor workers: $WORKERS; no-op handler; no webhook; $N executions per scenario"
echo

one=$(admit_rate 1 8)
hundred=$(admit_rate 100 1)
thousand=$(admit_rate 1000 1)
tenk=$(admit_rate 10000 1)
paused=$(among_paused)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
printf "%-62s %10s %s\n" "executions spread over" "exec/s" "vs one connector"
printf "%-62s %10s %s\n" "1 connector at limit 8 ($N executions)" "$one" "1.00"
printf "%-62s %10s %s\n" "100 connectors at limit 1, $((N / 100)) each" "$hundred" "$(ratio "$hundred" "$one")"
printf "%-62s %10s %s\n" "1,000 connectors at limit 1, $((N / 1000)) each" "$thousand" "$(ratio "$thousand" "$one")"
printf "%-62s %10s %s\n" "10,000 connectors at limit 1, $((N / 10000)) each" "$tenk" "$(ratio "$tenk" "$one")"
printf "%-62s %10s %s\n" "1 connector at limit 8 beside 9,999 paused with a backlog" "$paused" "$(ratio "$paused" "$one")"

# the operator's views with 10,000 connectors and a long history
bench_psql >/dev/null <<SQL
INSERT INTO smartconnector.execution (connector_id, state, trigger_type, initiated_by, diff_check,
									  queued_at, started_at, ended_at, records_created)
SELECT 1 + g % 10000, CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'success' END::smartconnector.execution_state,
	   'api', 'bench', false, t, t, t + interval '1 second', 1
  FROM generate_series(1, $HISTORY) g,
	   LATERAL (SELECT now() - (g % 86400) * interval '1 second' AS t) x;
VACUUM ANALYZE;
SQL
view_ms()
{
	bench_psql -c "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON) $1" | awk '/Execution Time/ {print $3}'
}
view_ms "SELECT * FROM smartconnector.overview" >/dev/null	# warm
printf "%-62s %10s\n" "overview, 10,000 connectors, $HISTORY ended executions (ms)" "$(view_ms 'SELECT * FROM smartconnector.overview')"
printf "%-62s %10s\n" "recent_executions LIMIT 20, same history (ms)" "$(view_ms 'SELECT * FROM smartconnector.recent_executions LIMIT 20')"
