#!/usr/bin/env bash
# bench/lifecycle.sh: the whole lifecycle, trigger -> admission -> no-op
# handler -> completion -> webhook received, against the commit ceiling.
#
# On one throwaway server and an nginx receiver on 127.0.0.1, in one run:
#  - the commit ceiling: pgbench single-row INSERT, 1 and 8 clients;
#  - N executions (20,000) of 1 connector at limit 8, and of 100
#    connectors at limit 1, from release of the backlog to the last webhook
#    received (executions per second), with end-to-receipt latency under
#    that load;
#  - a steady stream (pgbench -R) of triggers: trigger-to-start and
#    end-to-receipt latency, median and p99, under load;
#  - executor private memory (RssAnon) early and late in the run.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-20000}
WORKERS=${WORKERS:-8}
RATE=${RATE:-200}
GROUP_SIZE=${GROUP_SIZE:-1}

bench_start "smartconnector.max_workers = $WORKERS
smartconnector.block_private_addresses = off
smartconnector.executor_idle_timeout = 600
smartconnector.group_size = $GROUP_SIZE"
bench_start_nginx
URL="http://127.0.0.1:$HTTP_PORT/hook"

bench_psql >/dev/null <<SQL
CREATE EXTENSION smartconnector;
CREATE FUNCTION public.noop(ctx jsonb) RETURNS void LANGUAGE sql AS \$\$ SELECT \$\$;
SELECT smartconnector.create_connector('One', 'one', handler => 'public.noop(jsonb)',
	status => 'operational', max_concurrent_executions => 0, execution_ended_webhook_url => '$URL');
SELECT smartconnector.create_connector('Many ' || i, 'many_' || i, handler => 'public.noop(jsonb)',
	status => 'operational', max_concurrent_executions => 0, execution_ended_webhook_url => '$URL')
  FROM generate_series(1, 100) i;
SQL

executor_rss()
{
	bench_psql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'smartconnector executor'" |
		while read -r pid; do awk '/RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null; done |
		awk '{s += $1; n++} END {if (n) printf "%d", s / n; else printf "-"}'
}

echo "== smartconnector lifecycle benchmark =="
bench_conditions
echo "executor workers: $WORKERS; group_size: $GROUP_SIZE; no-op handler; receiver: nginx (204); $N executions per scenario"
echo

ceiling1=$(bench_insert_ceiling 1 5)
ceiling8=$(bench_insert_ceiling 8 5)

read -r one_rate one_p50 one_p99 one_cpu < <(bench_lifecycle "api_name = 'one'" 8)
rss_early=$(executor_rss)
read -r many_rate many_p50 many_p99 many_cpu < <(bench_lifecycle "api_name LIKE 'many\\_%'" 1)

# steady stream: RATE triggers per second for 10 s over 'one' at limit 8
bench_psql -c "TRUNCATE smartconnector.execution CASCADE;
	UPDATE smartconnector.connector SET max_concurrent_executions = 8 WHERE api_name = 'one'" >/dev/null
echo "SELECT smartconnector.trigger('one');" > "$BENCH_DIR/stream.sql"
chmod 644 "$BENCH_DIR/stream.sql"
bench_pgbench -n -c 2 -j 2 -R "$RATE" -T 10 -f "$BENCH_DIR/stream.sql" >/dev/null 2>&1
until [[ $(bench_psql -c "SELECT count(*) = (SELECT count(*) FROM smartconnector.execution) FROM smartconnector.delivery WHERE state = 'delivered'") == t ]]; do
	sleep 0.5
done
read -r s_start50 s_start99 s_recv50 s_recv99 streamed < <(bench_psql -F ' ' -c "
	SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.started_at - e.queued_at) * 1000)::numeric, 2),
		   round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM e.started_at - e.queued_at) * 1000)::numeric, 2),
		   round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d.latency_ms)::numeric, 2),
		   round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d.latency_ms)::numeric, 2),
		   count(*)
	  FROM smartconnector.execution e JOIN smartconnector.delivery d ON d.execution_id = e.id")
rss_late=$(executor_rss)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
printf "%-66s %10s %s\n" "measure" "value" "ratio"
printf "%-66s %10s %s\n" "pgbench single-row INSERT, 1 client (tps)" "$ceiling1" ""
printf "%-66s %10s %s\n" "pgbench single-row INSERT, 8 clients (tps, the ceiling)" "$ceiling8" "1.00"
printf "%-66s %10s %s\n" "lifecycle, 1 connector at limit 8 (executions/s to webhook)" "$one_rate" "$(ratio "$one_rate" "$ceiling8") of ceiling"
printf "%-66s %10s\n" "  end-to-receipt latency under that load, median / p99 (ms)" "$one_p50 / $one_p99"
printf "%-66s %10s\n" "  CPU per execution, all server processes and nginx (us)" "$one_cpu"
printf "%-66s %10s %s\n" "lifecycle, 100 connectors at limit 1 (executions/s to webhook)" "$many_rate" "$(ratio "$many_rate" "$ceiling8") of ceiling"
printf "%-66s %10s\n" "  end-to-receipt latency under that load, median / p99 (ms)" "$many_p50 / $many_p99"
printf "%-66s %10s\n" "  CPU per execution, all server processes and nginx (us)" "$many_cpu"
printf "%-66s %10s\n" "steady stream of $RATE triggers/s for 10 s ($streamed executions):" ""
printf "%-66s %10s\n" "  trigger-to-start latency, median / p99 (ms)" "$s_start50 / $s_start99"
printf "%-66s %10s\n" "  end-to-receipt latency, median / p99 (ms)" "$s_recv50 / $s_recv99"
printf "%-66s %10s\n" "executor private memory (RssAnon, kB, mean per executor) early / late" "$rss_early / $rss_late"
