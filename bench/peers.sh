#!/usr/bin/env bash
# bench/peers.sh: smartconnector beside the fastest PostgreSQL job queue on
# the same server (issue 15).
#
# One throwaway server, one nginx receiver on 127.0.0.1 (204), one run:
#  - the commit ceiling: pgbench single-row INSERT, 8 clients;
#  - smartconnector: N no-op executions of one connector at limit 8, each
#    ending with a signed webhook through the outbox (queued while paused,
#    released in one commit, timed to the last webhook received), alone
#    and grouped 8 per transaction (smartconnector.group_size = 8);
#  - graphile-worker (npm, installed here), N no-op jobs at concurrency 8,
#    each POSTing the webhook itself, with its defaults and batched
#    (localQueue size 500, completeJobBatchDelay 0), timed from the start
#    of the worker to the last job done.
# What graphile-worker does not give and smartconnector does: the handler's
# writes and the outcome commit together, the webhook is durable and
# retried with the same webhook-id, and the limit holds.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-20000}
CONCURRENCY=8
GRAPHILE_WORKER=${GRAPHILE_WORKER:-0.18.0}

bench_start "smartconnector.max_workers = $CONCURRENCY
smartconnector.block_private_addresses = off
smartconnector.executor_idle_timeout = 600"
bench_start_nginx
URL="http://127.0.0.1:$HTTP_PORT/hook"

# Node.js and graphile-worker, in a cache outside the tree (nothing of it is committed)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
peer_dir=/var/cache/smartconnector-bench/graphile-worker-$GRAPHILE_WORKER
if [[ ! -d $peer_dir/node_modules/graphile-worker ]]; then
	mkdir -p "$peer_dir"
	(cd "$peer_dir" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent \
		"graphile-worker@$GRAPHILE_WORKER" pg >/dev/null)
fi
cp "$src/bench/peers/graphile.mjs" "$peer_dir/"
chmod -R a+rX "$peer_dir"

bench_psql >/dev/null <<SQL
CREATE EXTENSION smartconnector;
CREATE FUNCTION public.noop(ctx jsonb) RETURNS void LANGUAGE sql AS \$\$ SELECT \$\$;
SELECT smartconnector.create_connector('One', 'one', handler => 'public.noop(jsonb)',
	status => 'operational', max_concurrent_executions => 0, execution_ended_webhook_url => '$URL',
	webhook_secret => smartconnector.generate_webhook_secret());
SQL

graphile()
{
	sc_as_postgres env PGHOST="$BENCH_DIR" PGPORT="$BENCH_PORT" PGUSER=postgres PGDATABASE=postgres \
		node "$peer_dir/graphile.mjs" "$1" "$N" "$CONCURRENCY" "$URL"
}

echo "== smartconnector beside graphile-worker $GRAPHILE_WORKER =="
bench_conditions
echo "$N no-op jobs, $CONCURRENCY at once, each ending with a webhook POST to nginx (204)"
echo

ceiling8=$(bench_insert_ceiling 8 5)
read -r sc_rate sc_p50 sc_p99 sc_cpu < <(bench_lifecycle "api_name = 'one'" "$CONCURRENCY")
# the same with short handlers grouped, 8 per transaction (README: "Short handlers run in groups")
bench_psql -c "ALTER SYSTEM SET smartconnector.group_size = 8" -c "SELECT pg_reload_conf()" >/dev/null
read -r sg_rate sg_p50 sg_p99 sg_cpu < <(bench_lifecycle "api_name = 'one'" "$CONCURRENCY")
bench_psql -c "ALTER SYSTEM RESET smartconnector.group_size" -c "SELECT pg_reload_conf()" >/dev/null
gw_default=$(graphile default)
gw_batched=$(graphile batched)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
printf "%-72s %8s %s\n" "system" "jobs/s" "of the insert ceiling"
printf "%-72s %8s %s\n" "pgbench single-row INSERT, 8 clients (the ceiling)" "$ceiling8" "1.00"
printf "%-72s %8s %s\n" "smartconnector, limit 8, signed webhook through the outbox" "$sc_rate" "$(ratio "$sc_rate" "$ceiling8")"
printf "%-72s %8s %s\n" "smartconnector, the same, group_size = 8 (end-to-receipt p99 ${sg_p99} ms)" "$sg_rate" "$(ratio "$sg_rate" "$ceiling8")"
printf "%-72s %8s %s\n" "graphile-worker $GRAPHILE_WORKER, defaults, the task POSTs the webhook" "$gw_default" "$(ratio "$gw_default" "$ceiling8")"
printf "%-72s %8s %s\n" "graphile-worker $GRAPHILE_WORKER, localQueue 500, completeJobBatchDelay 0" "$gw_batched" "$(ratio "$gw_batched" "$ceiling8")"
printf "%-72s %8s\n" "smartconnector vs graphile-worker batched" "$(ratio "$sc_rate" "$gw_batched")"
printf "%-72s %8s\n" "smartconnector, group_size = 8, vs graphile-worker batched" "$(ratio "$sg_rate" "$gw_batched")"
