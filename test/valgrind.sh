#!/usr/bin/env bash
# test/valgrind.sh: run the worker paths under valgrind's memcheck.
#
# Starts a throwaway server with every PostgreSQL process under valgrind,
# drives executors (handler runs, a failing one, a dry run, cancel, a
# handler that ignores cancel and is terminated, two roles' executors, the
# session reset after a handler left state behind), the launcher (a dead
# external runner) and the dispatcher (signed webhooks to a
# local receiver, a refused private address, emails to a local SMTP server),
# shuts down cleanly, and reports every error and definite leak whose stack
# passes through smartconnector.so.  Exit status 1 if there is any.
# Slow (valgrind); not part of test/run.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$src/test/deps.sh"
sc_install_packages
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
sc_build_install "$src"

work=$(sc_writable_copy "$src")
data=$work/data
mkdir -p "$work/vg" && chmod 777 "$work/vg"
cleanup() { sc_as_postgres pg_ctl -D "$data" -m immediate stop >/dev/null 2>&1 || true; pkill -f "$work/test/lib/" || true; }
trap cleanup EXIT

smtp_port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sc_as_postgres /usr/bin/python3 "$work/test/lib/receiver.py" --log "$work/hooks.jsonl" --port-file "$work/http.port" >/dev/null 2>&1 &
sc_as_postgres /usr/bin/python3 "$work/test/lib/smtp_sink.py" --port "$smtp_port" --log "$work/mail.jsonl" --ready-file "$work/smtp.ready" >/dev/null 2>&1 &
for _ in $(seq 100); do [[ -s $work/http.port && -s $work/smtp.ready ]] && break; sleep 0.1; done
http_port=$(cat "$work/http.port")

sc_as_postgres initdb -D "$data" -A trust -U postgres >/dev/null
cat >> "$data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
port = 54350
shared_preload_libraries = 'smartconnector'
smartconnector.database_name = 'postgres'
smartconnector.smtp_url = 'smtp://127.0.0.1:$smtp_port'
smartconnector.webhook_retry_schedule = '1s'
smartconnector.executor_idle_timeout = 5
smartconnector.cancel_grace = 1s
max_worker_processes = 16
CONF
sc_as_postgres valgrind --quiet --trace-children=yes --track-origins=yes \
	--leak-check=full --show-leak-kinds=definite --num-callers=30 \
	--log-file="$work/vg/%p.log" \
	/usr/lib/postgresql/15/bin/postgres -D "$data" > "$work/server.log" 2>&1 &
for _ in $(seq 600); do sc_as_postgres pg_isready -h "$work" -p 54350 -q && break; sleep 0.5; done

psql_() { sc_as_postgres psql -X -q -h "$work" -p 54350 -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
psql_ <<SQL
CREATE EXTENSION smartconnector;
CREATE FUNCTION public.work(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS \$\$
BEGIN
	PERFORM smartconnector.record('k' || i, 'created') FROM generate_series(1, 50) i;
	PERFORM smartconnector.unchanged('k1', ctx -> 'input');
	IF ctx -> 'input' ? 'fail' THEN RAISE EXCEPTION 'requested failure'; END IF;
	IF ctx -> 'input' ? 'sleep' THEN PERFORM pg_sleep(5); END IF;
	RETURN '{"ok": true}';
END \$\$;
SELECT smartconnector.create_connector('Work', 'work', handler => 'public.work(jsonb)',
	status => 'operational', max_concurrent_executions => 2, diff_check => true,
	execution_ended_webhook_url => 'http://localhost:$http_port/ok',
	webhook_secret => smartconnector.generate_webhook_secret(),
	webhook_headers => '{"X-Api-Key": "k"}',
	notification_email => 'ops@example.com', error_notification_email => 'oncall@example.com');
SELECT smartconnector.trigger('work') FROM generate_series(1, 10);
SELECT smartconnector.trigger('work', '{"fail": true}');
SELECT smartconnector.trigger('work', dry_run => true);
SELECT smartconnector.trigger('work', '{"sleep": true}') AS slow \gset
-- a second role, whose handler leaves session state behind for the reset
CREATE ROLE regress_vg LOGIN;
CREATE FUNCTION public.messy(ctx jsonb) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
	CREATE TEMP TABLE IF NOT EXISTS leftover (x integer);
	EXECUTE 'PREPARE p' || (ctx ->> 'execution_id') || ' AS SELECT 1';
	EXECUTE 'DECLARE c' || (ctx ->> 'execution_id') || ' CURSOR WITH HOLD FOR SELECT 1';
	PERFORM pg_advisory_lock(1);
	PERFORM set_config('work_mem', '1234kB', false);
END \$\$;
GRANT EXECUTE ON FUNCTION public.messy(jsonb) TO regress_vg;
SELECT smartconnector.create_connector('Messy', 'messy', handler => 'public.messy(jsonb)',
	run_as => 'regress_vg', status => 'operational');
SELECT smartconnector.trigger('messy') FROM generate_series(1, 5);
SQL
# let the slow one start, then cancel it
until [[ $(psql_ -Atc "SELECT count(*) FROM smartconnector.execution_progress") -gt 0 ]]; do sleep 0.5; done
psql_ -c "SELECT smartconnector.cancel(max(execution_id)) FROM smartconnector.execution_progress" >/dev/null
# a handler that ignores cancel: the launcher terminates its executor
psql_ <<SQL
CREATE FUNCTION public.stubborn(ctx jsonb) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
	LOOP
		BEGIN
			PERFORM pg_sleep(0.2);
		EXCEPTION WHEN query_canceled THEN NULL;
		END;
	END LOOP;
END \$\$;
SELECT smartconnector.create_connector('Stubborn', 'stubborn', handler => 'public.stubborn(jsonb)',
	status => 'operational');
SELECT smartconnector.trigger('stubborn');
SQL
until [[ $(psql_ -Atc "SELECT count(*) FROM smartconnector.execution_progress p JOIN smartconnector.execution e ON e.id = p.execution_id JOIN smartconnector.connector c ON c.id = e.connector_id WHERE c.api_name = 'stubborn'") -gt 0 ]]; do sleep 0.5; done
psql_ -c "SELECT smartconnector.cancel(e.id) FROM smartconnector.execution e JOIN smartconnector.connector c ON c.id = e.connector_id WHERE c.api_name = 'stubborn'" >/dev/null
until [[ $(psql_ -Atc "SELECT count(*) FROM smartconnector.execution WHERE state IN ('queued', 'running')") == 0 ]]; do sleep 1; done
# (webhooks to localhost are refused so far: block_private_addresses is on)
until [[ $(psql_ -Atc "SELECT count(*) FROM smartconnector.execution WHERE state IN ('queued', 'running')") == 0 ]]; do sleep 1; done
# an external runner that dies
psql_ -c "SELECT smartconnector.create_connector('Ext', 'ext', status => 'operational')" >/dev/null
psql_ -c "SELECT smartconnector.trigger('ext')" >/dev/null
psql_ -c "SELECT smartconnector.claim('ext')" >/dev/null
until [[ $(psql_ -Atc "SELECT count(*) FROM smartconnector.execution WHERE state = 'failed' AND error LIKE 'runner ended%'") == 1 ]]; do sleep 1; done
# allow loopback now, and redeliver everything
psql_ -c "ALTER SYSTEM SET smartconnector.block_private_addresses = off" -c "SELECT pg_reload_conf()" >/dev/null
sleep 2
psql_ -c "SELECT count(smartconnector.redeliver(id)) FROM smartconnector.delivery" >/dev/null
until [[ $(psql_ -Atc "SELECT count(*) FROM smartconnector.delivery WHERE state = 'pending'") == 0 ]]; do sleep 1; done
psql_ -Atc "SELECT channel || ' ' || state || ' ' || count(*) FROM smartconnector.delivery GROUP BY channel, state ORDER BY 1"
sc_as_postgres pg_ctl -D "$data" -m fast -t 600 stop >/dev/null

echo "valgrind logs: $(ls "$work"/vg/*.log | wc -l) processes"
# A report is a paragraph.  PostgreSQL itself writes uninitialised padding
# to WAL and the relcache init file ("Syscall param ... points to
# uninitialised byte(s)"; its own valgrind.supp suppresses these); every
# other error, and every definite leak, whose stack passes through our
# sources is a finding.
ours='(smartconnector|admission|binding|catalog|cron|dispatcher|executor|http|identity|launcher|lifecycle|payload|runtime|shmem|worker)\.c:'
bad=0
for f in "$work"/vg/*.log; do
	awk -v RS= -v ours="$ours" '$0 ~ ours && $0 !~ /Syscall param (write|pwrite64)\(buf\) points to uninitialised/' \
		"$f" > "$f.ours"
	if [[ -s $f.ours ]]; then
		echo "---- $(basename "$f")"; cat "$f.ours"; bad=1
	fi
done
echo "reports in all: $(for f in "$work"/vg/*.log; do awk -v RS= 'END {print NR}' "$f"; done |
	awk '{s += $1} END {print s}') (the rest are PostgreSQL's own padding writes and startup allocations)"
if [[ $bad -eq 0 ]]; then
	echo "valgrind: no invalid access, uninitialised use or definite leak in smartconnector's code"
fi
rm -rf "$work"
exit $bad
