#!/usr/bin/env bash
# bench/soak.sh: does a long run stay flat?  SOAK_N executions (200,000)
# through one throwaway server, in rounds, with history retention on:
#  - a third of them fail (the handler raises, after recording rows);
#  - a tenth end with a webhook to a receiver that refuses connections
#    (retried twice, then failed); the rest post to nginx (204);
#  - smartconnector.history_retention = 1min, so the launcher deletes what
#    ended more than a minute ago while the run goes on.
# Every round it prints each worker's private memory (RssAnon: the
# launcher, the dispatcher, the executors' mean and max) and the size of the
# hot tables; at the end the growth from the first sample after warm-up.
# Targets: worker memory flat within 5 MB; table sizes bounded (they stop
# growing once retention and vacuum keep up).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SOAK_N=${SOAK_N:-200000}
ROUND=${ROUND:-10000}
WORKERS=${WORKERS:-4}

bench_start "smartconnector.max_workers = $WORKERS
smartconnector.block_private_addresses = off
smartconnector.executor_idle_timeout = 600
smartconnector.history_retention = 1
smartconnector.webhook_retry_schedule = '1s,1s'
autovacuum_naptime = 10s"
bench_start_nginx
OK_URL="http://127.0.0.1:$HTTP_PORT/hook"
DEAD_URL="http://127.0.0.1:9/hook"

bench_psql >/dev/null <<SQL
CREATE EXTENSION smartconnector;
CREATE FUNCTION public.work(ctx jsonb) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
	PERFORM smartconnector.record('r' || i, 'created') FROM generate_series(1, 3) i;
	IF (ctx -> 'input' ->> 'fail')::boolean THEN
		RAISE EXCEPTION 'soak failure' USING DETAIL = 'a detail', HINT = 'a hint';
	END IF;
END \$\$;
SELECT smartconnector.create_connector('Good', 'good', handler => 'public.work(jsonb)',
	status => 'operational', max_concurrent_executions => 4, execution_ended_webhook_url => '$OK_URL');
SELECT smartconnector.create_connector('Bad', 'bad', handler => 'public.work(jsonb)',
	status => 'operational', max_concurrent_executions => 4, execution_ended_webhook_url => '$OK_URL');
SELECT smartconnector.create_connector('Unreachable', 'unreachable', handler => 'public.work(jsonb)',
	status => 'operational', max_concurrent_executions => 4, execution_ended_webhook_url => '$DEAD_URL');
SQL

rss_of()
{
	bench_psql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = '$1'" |
		while read -r pid; do awk '/RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null; done |
		awk '{s += $1; if ($1 > m) m = $1; n++} END {if (n) printf "%d %d", s / n, m; else printf "- -"}'
}

tables_kb()
{
	bench_psql -F ' ' -c "SELECT pg_total_relation_size('smartconnector.execution') / 1024,
		pg_total_relation_size('smartconnector_internal.queue') / 1024,
		pg_total_relation_size('smartconnector.delivery') / 1024,
		pg_total_relation_size('smartconnector.execution_record') / 1024"
}

echo "== smartconnector soak benchmark =="
bench_conditions
echo "executor workers: $WORKERS; $SOAK_N executions in rounds of $ROUND: 1/3 failing, 1/10 webhooks refused, history_retention 1min"
printf "%-6s %8s %6s | %9s %9s %9s %9s | %9s %9s %9s %9s\n" round done s launcher dispatch exec_avg exec_max \
	execution queue delivery records
start=$(date +%s)
done_n=0
round=0
declare -a first last
while (( done_n < SOAK_N )); do
	round=$((round + 1))
	bench_psql >/dev/null <<SQL
SELECT count(smartconnector.trigger(CASE WHEN i % 10 = 0 THEN 'unreachable'
										 WHEN i % 3 = 0 THEN 'bad' ELSE 'good' END,
								   jsonb_build_object('fail', i % 3 = 0)))
  FROM generate_series(1, $ROUND) i;
SQL
	until [[ $(bench_psql -c "SELECT count(*) = 0 FROM smartconnector_internal.queue") == t ]]; do sleep 1; done
	done_n=$((done_n + ROUND))
	read -r l_avg _ <<< "$(rss_of 'smartconnector launcher')"
	read -r d_avg _ <<< "$(rss_of 'smartconnector dispatcher')"
	read -r e_avg e_max <<< "$(rss_of 'smartconnector executor')"
	read -r t_e t_q t_d t_r <<< "$(tables_kb)"
	printf "%-6s %8s %6s | %9s %9s %9s %9s | %9s %9s %9s %9s\n" "$round" "$done_n" "$(( $(date +%s) - start ))" \
		"$l_avg" "$d_avg" "$e_avg" "$e_max" "$t_e" "$t_q" "$t_d" "$t_r"
	last=("$l_avg" "$d_avg" "$e_max" "$t_e" "$t_d" "$t_r")
	(( round == 2 )) && first=("${last[@]}")
done
# let the last deliveries end (retries) and retention catch up once more
until [[ $(bench_psql -c "SELECT count(*) = 0 FROM smartconnector.delivery WHERE state = 'pending'") == t ]]; do sleep 1; done
echo
echo "growth from round 2 to the end (private memory kB; table sizes kB):"
names=(launcher dispatcher executor_max execution delivery execution_record)
for i in "${!names[@]}"; do
	printf "  %-18s %9s -> %9s  (%+d)\n" "${names[$i]}" "${first[$i]}" "${last[$i]}" $(( ${last[$i]} - ${first[$i]} ))
done
echo "executions per second overall: $(( SOAK_N / ( $(date +%s) - start ) ))"
echo "ended executions kept (retention 1 min): $(bench_psql -c "SELECT count(*) FROM smartconnector.execution")"
