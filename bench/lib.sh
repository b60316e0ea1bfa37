# bench/lib.sh: sourced by the benchmarks.  Starts a throwaway PostgreSQL 15
# server (as the postgres user when run as root) with smartconnector
# preloaded, on a Unix socket in a temporary directory, and removes it again.
#
# After bench_start: $BENCH_DIR, $BENCH_PORT, and bench_psql / bench_pgbench
# to talk to the server.

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$src/test/deps.sh"

BENCH_PORT=${BENCH_PORT:-54331}

bench_start()
{
	local extra_conf=$1
	sc_install_packages
	sc_build_install "$src"
	BENCH_DIR=$(mktemp -d /tmp/smartconnector-bench.XXXXXX)
	[[ $(id -u) -eq 0 ]] && chown postgres: "$BENCH_DIR"
	chmod 755 "$BENCH_DIR"
	trap bench_stop EXIT
	sc_as_postgres initdb -D "$BENCH_DIR/data" -A trust -U postgres >/dev/null
	cat >> "$BENCH_DIR/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$BENCH_DIR'
port = $BENCH_PORT
shared_buffers = 256MB
max_worker_processes = 16
shared_preload_libraries = 'smartconnector'
smartconnector.database_name = 'postgres'
# benchmark clients read no NOTICEs (trigger() says why a run waits)
client_min_messages = warning
$extra_conf
CONF
	sc_as_postgres pg_ctl -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" -w start >/dev/null
}

bench_stop()
{
	[[ -n ${BENCH_DIR:-} ]] || return 0
	sc_as_postgres pg_ctl -D "$BENCH_DIR/data" -m fast stop >/dev/null 2>&1 || true
	rm -rf "$BENCH_DIR"
}

bench_psql()
{
	sc_as_postgres psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$BENCH_DIR" -p "$BENCH_PORT" -U postgres -d postgres "$@"
}

bench_pgbench()
{
	sc_as_postgres pgbench -h "$BENCH_DIR" -p "$BENCH_PORT" -U postgres "$@" postgres
}

# Print the machine and conditions a result belongs to.
bench_conditions()
{
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
	echo "server: $(bench_psql -c 'SELECT version()' | cut -d, -f1); shared_buffers=256MB, synchronous_commit=$(bench_psql -c 'SHOW synchronous_commit'), fsync=$(bench_psql -c 'SHOW fsync')"
	echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
}

# pgbench's single-row insert rate with N clients for S seconds (tps).
bench_insert_ceiling()
{
	local clients=$1 seconds=$2
	bench_psql -c 'DROP TABLE IF EXISTS bench_insert; CREATE TABLE bench_insert (id bigserial PRIMARY KEY, v integer)'
	echo 'INSERT INTO bench_insert (v) VALUES (1);' > "$BENCH_DIR/insert.sql"
	chmod 644 "$BENCH_DIR/insert.sql"
	bench_pgbench -n -c "$clients" -j "$clients" -T "$seconds" -f "$BENCH_DIR/insert.sql" 2>/dev/null |
		awk '/^tps/ {printf "%.0f\n", $3}'
}

# Start nginx on 127.0.0.1 answering 204 to every request (the receiver of
# the dispatch and lifecycle benchmarks), installed here if missing; sets
# HTTP_PORT and arranges for it to stop with the server.
bench_start_nginx()
{
	if ! command -v nginx >/dev/null; then
		[[ $(id -u) -eq 0 ]] || { echo "nginx is needed: run as root or install it" >&2; exit 1; }
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
	fi
	HTTP_PORT=$((BENCH_PORT + 1000))
	mkdir -p "$BENCH_DIR/nginx"
	cat > "$BENCH_DIR/nginx/nginx.conf" <<CONF
daemon on;
worker_processes 1;
pid $BENCH_DIR/nginx/nginx.pid;
error_log $BENCH_DIR/nginx/error.log;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path $BENCH_DIR/nginx;
	keepalive_requests 1000000;
	server { listen 127.0.0.1:$HTTP_PORT; location / { return 204; } }
}
CONF
	nginx -c "$BENCH_DIR/nginx/nginx.conf"
	trap 'nginx -c "$BENCH_DIR/nginx/nginx.conf" -s stop 2>/dev/null || true; bench_stop' EXIT
}

# CPU time used so far, in ms, by the server (the postmaster, its live
# children, and the children it has reaped) and by nginx: for CPU per
# execution, which drifts less than rates on a shared machine.
bench_cpu_ms()
{
	local pm tck
	pm=$(head -1 "$BENCH_DIR/data/postmaster.pid")
	tck=$(getconf CLK_TCK)
	{
		awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
		for p in $(ps -o pid= --ppid "$pm") $(pgrep -x nginx); do
			awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null
		done
	} | awk -v t="$tck" '{s += $1} END {printf "%d", s * 1000 / t}'
}

# Queue $N executions over the connectors WHERE $1 (paused), release them with
# the given limit in one commit, wait for every webhook; print
# "executions/s end-to-receipt_p50 end-to-receipt_p99 cpu_us_per_execution".
bench_lifecycle()
{
	local where=$1 limit=$2
	bench_psql >/dev/null <<SQL
TRUNCATE smartconnector.execution CASCADE;
UPDATE smartconnector.connector SET max_concurrent_executions = 0;
SELECT count(smartconnector_internal.enqueue(c.id, '{}', false, false, 'api', 'bench'))
  FROM (SELECT id FROM smartconnector.connector WHERE $where) c,
	   generate_series(1, ($N / (SELECT count(*) FROM smartconnector.connector WHERE $where))::int);
VACUUM ANALYZE smartconnector.execution, smartconnector_internal.queue, smartconnector.delivery;
SQL
	local total cpu0
	total=$(bench_psql -c "SELECT count(*) FROM smartconnector.execution")
	cpu0=$(bench_cpu_ms)
	bench_psql -c "CREATE TEMP TABLE t AS SELECT clock_timestamp() AS released;
		UPDATE smartconnector.connector SET max_concurrent_executions = $limit WHERE $where;
		SELECT 1" >/dev/null
	local released
	released=$(bench_psql -c "SELECT clock_timestamp()")
	until [[ $(bench_psql -c "SELECT count(*) = $total FROM smartconnector.delivery WHERE state = 'delivered'") == t ]]; do
		sleep 0.5
	done
	local cpu=$(( $(bench_cpu_ms) - cpu0 ))
	bench_psql -F ' ' -c "
		SELECT round($total / extract(epoch FROM max(d.delivered_at) - '$released'::timestamptz)),
			   round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d.latency_ms)::numeric, 1),
			   round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d.latency_ms)::numeric, 1),
			   round($cpu * 1000.0 / $total)
		  FROM smartconnector.delivery d"
}

# bench_backlog API_NAME N: N ended executions of a connector whose webhook
# deliveries wait, postponed by a day, as the outbox queues them at an end
# (src/outbox.c); a benchmark releases them at once.
bench_backlog()
{
	local api_name=$1 n=$2
	bench_psql >/dev/null <<SQL
-- one transaction: the dispatcher must not see them due before they are postponed
BEGIN;
WITH e AS (
	INSERT INTO smartconnector.execution
		(connector_id, state, trigger_type, initiated_by, diff_check, queued_at, started_at, ended_at, records_created, records_total)
	SELECT smartconnector.connector_id('$api_name'), 'success', 'api', 'bench', false,
		   clock_timestamp(), clock_timestamp(), clock_timestamp(), i, i
	  FROM generate_series(1, $n) i
	RETURNING *)
INSERT INTO smartconnector.delivery
	(execution_id, connector_id, channel, target, target_host, reason, webhook_id, payload,
	 webhook_secret, webhook_headers, next_attempt_at)
SELECT e.id, c.id, 'webhook', c.execution_ended_webhook_url,
	   smartconnector.url_host(c.execution_ended_webhook_url), 'webhook',
	   'msg_' || replace(gen_random_uuid()::text, '-', ''),
	   smartconnector_internal.event(e::smartconnector.execution, c), c.webhook_secret,
	   c.webhook_headers, now() + interval '1 day'
  FROM e JOIN smartconnector.connector c ON c.id = e.connector_id;
COMMIT;
VACUUM ANALYZE smartconnector.delivery;
SQL
}
