# Executor workers run connectors that have a handler: as the run_as role,
# with counts and report, failure handling, dry runs, cancel, diff check,
# lock_record and progress visible while the handler runs.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until run_and_wait execution_field start_pgbench finish_pgbench);

my $node = new_node('executor', conf => "smartconnector.executor_idle_timeout = 3\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_etl LOGIN;
	CREATE TABLE public.target (k text PRIMARY KEY, v integer NOT NULL);
	CREATE TABLE public.counter (id integer PRIMARY KEY, v integer NOT NULL);
	INSERT INTO public.counter VALUES (1, 0);
	GRANT ALL ON public.target, public.counter TO regress_etl;

	-- input: rows (how many to write), fail, failed_records, set_guc, wait_lock
	CREATE FUNCTION public.load(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	DECLARE
		inp jsonb := ctx -> 'input';
	BEGIN
		FOR i IN 1 .. coalesce((inp ->> 'rows')::int, 0) LOOP
			INSERT INTO public.target VALUES (ctx ->> 'execution_id' || '-' || i, i);
			PERFORM smartconnector.record(ctx ->> 'execution_id' || '-' || i, 'created');
		END LOOP;
		FOR i IN 1 .. coalesce((inp ->> 'failed_records')::int, 0) LOOP
			PERFORM smartconnector.record('bad-' || i, 'failed', 'rejected by the target');
		END LOOP;
		IF inp ? 'wait_lock' THEN
			PERFORM pg_advisory_lock((inp ->> 'wait_lock')::bigint);
			PERFORM pg_advisory_unlock((inp ->> 'wait_lock')::bigint);
		END IF;
		IF inp ? 'set_guc' THEN
			PERFORM set_config('work_mem', '1234kB', false);
		END IF;
		IF inp ? 'fail' THEN
			RAISE EXCEPTION 'source rejected the request: %', inp ->> 'fail';
		END IF;
		RETURN jsonb_build_object('current_user', current_user,
								  'work_mem', current_setting('work_mem'),
								  'dry_run', ctx -> 'dry_run');
	END $$;
	GRANT EXECUTE ON FUNCTION public.load(jsonb) TO regress_etl;

	SELECT smartconnector.create_connector('Loader', 'loader',
		handler => 'public.load(jsonb)', run_as => 'regress_etl',
		status => 'operational');
});


# --- a successful run, as run_as ---
my $ok = run_and_wait($node, 'loader', '{"rows": 3}');
is(execution_field($node, $ok, 'state'), 'success', 'handler run ends success');
is(execution_field($node, $ok, "metadata ->> 'current_user'"), 'regress_etl', 'the handler runs as run_as');
is(execution_field($node, $ok, 'records_created || \'/\' || records_total'), '3/3', 'record counts are kept');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.target WHERE k LIKE '$ok-%'"),
	'3', 'the handler wrote its rows');
is($node->safe_psql('postgres', "SELECT count(*) FROM smartconnector.output_report($ok)"),
	'3', 'the output report has a row per record');
is(execution_field($node, $ok, 'started_at >= queued_at AND ended_at >= started_at'), 't',
	'timestamps are ordered');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'smartconnector executor'") > 0 ? 1 : 0,
	1, 'an executor shows in pg_stat_activity');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'smartconnector launcher'"),
	'1', 'the launcher shows in pg_stat_activity');

# --- a raising handler: failed, writes rolled back, report and counts kept ---
my $bad = run_and_wait($node, 'loader', '{"rows": 2, "fail": "quota"}');
is(execution_field($node, $bad, 'state'), 'failed', 'raising handler ends failed');
is(execution_field($node, $bad, 'error'), 'source rejected the request: quota', 'the error is kept');
is(execution_field($node, $bad, "metadata -> 'error' ->> 'sqlstate'"), 'P0001', 'the SQLSTATE is in metadata');
is(execution_field($node, $bad, 'records_created'), '2', 'counts gathered before the error are kept');
is($node->safe_psql('postgres', "SELECT count(*) FROM smartconnector.output_report($bad)"),
	'2', 'report rows gathered before the error are kept');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.target WHERE k LIKE '$bad-%'"),
	'0', 'the failed handler\'s writes are rolled back');
is($node->safe_psql('postgres', "SELECT status FROM smartconnector.connector WHERE api_name = 'loader'"),
	'need_attention', 'a failure moves an operational connector to need_attention');
my $again = run_and_wait($node, 'loader', '{"rows": 1}');
is(execution_field($node, $again, 'state'), 'success', 'need_attention still executes');
$node->safe_psql('postgres', "SELECT smartconnector.set_status('loader', 'operational')");

# --- partial success ---
my $partial = run_and_wait($node, 'loader', '{"rows": 1, "failed_records": 2}');
is(execution_field($node, $partial, 'state'), 'partial_success', 'failed records make partial_success');
is(execution_field($node, $partial, 'records_failed'), '2', 'failed records are counted');

# --- dry run: everything rolled back, report kept ---
my $dry = run_and_wait($node, 'loader', '{"rows": 4}', dry_run => 1);
is(execution_field($node, $dry, 'state'), 'success', 'dry run ends success');
is(execution_field($node, $dry, "metadata ->> 'dry_run'"), 'true', 'the handler is told it is a dry run');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.target WHERE k LIKE '$dry-%'"),
	'0', 'a dry run\'s writes are rolled back');
is($node->safe_psql('postgres', "SELECT count(*) FROM smartconnector.output_report($dry)"),
	'4', 'a dry run keeps its report');

# --- settings a handler changes do not leak into the next run ---
run_and_wait($node, 'loader', '{"set_guc": true}');
my $next = run_and_wait($node, 'loader', '{}');
isnt(execution_field($node, $next, "metadata ->> 'work_mem'"), '1234kB',
	'a SET inside a handler does not leak into the next execution');

# --- progress is visible while the handler runs; cancel interrupts it ---
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(4242)');
my $slow = $node->safe_psql('postgres',
	q{SELECT smartconnector.trigger('loader', '{"rows": 3, "wait_lock": 4242}')});
wait_until($node, qq{SELECT records_created = 3 FROM smartconnector.execution_progress WHERE execution_id = $slow},
	'progress of a running handler is visible from another session');
is(execution_field($node, $slow, 'state'), 'running', 'it is still running');
is($node->safe_psql('postgres', "SELECT smartconnector.cancel($slow)"), 't', 'cancel accepts it');
wait_until($node, "SELECT state = 'cancelled' FROM smartconnector.execution WHERE id = $slow",
	'a running handler is interrupted and ends cancelled');
is($node->safe_psql('postgres', "SELECT count(*) FROM smartconnector.output_report($slow)"),
	'3', 'the cancelled run keeps its report');

# --- cancel of a queued execution; it never starts ---
$node->safe_psql('postgres', "SELECT smartconnector.set_max_concurrent_executions('loader', 0)");
my $queued = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('loader', '{"rows": 1}')});
is($node->safe_psql('postgres', "SELECT smartconnector.cancel($queued)"), 't', 'cancel a queued one');
is(execution_field($node, $queued, "state || ' ' || (started_at IS NULL)"), 'cancelled true', 'it ends cancelled without starting');
$node->safe_psql('postgres', "SELECT smartconnector.set_max_concurrent_executions('loader', 1)");
$holder->query_safe('SELECT pg_advisory_unlock(4242)');

# --- a connector whose handler was dropped fails its executions clearly ---
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.doomed(ctx jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	SELECT smartconnector.create_connector('Doomed', 'doomed', handler => 'public.doomed(jsonb)',
		status => 'operational');
	DROP FUNCTION public.doomed(jsonb);
});
my $doomed = run_and_wait($node, 'doomed', '{}');
is(execution_field($node, $doomed, 'state'), 'failed', 'execution of a broken connector fails');
like(execution_field($node, $doomed, "error || ' ' || (metadata -> 'error' ->> 'detail')"),
	qr/connector "doomed" cannot execute The handler routine no longer exists/, 'and says why');

# --- connectors without a handler are left to external runners ---
$node->safe_psql('postgres', q{SELECT smartconnector.create_connector('Ext', 'ext', status => 'operational')});
my $ext = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
my $after = run_and_wait($node, 'loader', '{}');
is(execution_field($node, $ext, 'state'), 'queued', 'executors do not take executions of connectors without a handler');

# --- diff check inside a handler: unchanged records are skipped ---
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.sync(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE r record;
	BEGIN
		FOR r IN SELECT * FROM jsonb_each(ctx -> 'input') LOOP
			IF NOT smartconnector.unchanged(r.key, r.value) THEN
				PERFORM smartconnector.record(r.key, 'updated');
			END IF;
		END LOOP;
	END $$;
	SELECT smartconnector.create_connector('Sync', 'sync', handler => 'public.sync(jsonb)',
		status => 'operational', diff_check => true);
});
my $s1 = run_and_wait($node, 'sync', '{"a": 1, "b": 2, "c": 3}');
my $s2 = run_and_wait($node, 'sync', '{"a": 1, "b": 20, "c": 3}');
is(execution_field($node, $s1, "records_updated || '/' || records_skipped"), '3/0', 'first run processes every record');
is(execution_field($node, $s2, "records_updated || '/' || records_skipped"), '1/2', 'second run skips unchanged records');

# --- lock_record serialises parallel executions writing the same record ---
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.bump(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE seen integer;
	BEGIN
		PERFORM smartconnector.lock_record('counter-1');
		SELECT c.v INTO seen FROM public.counter c WHERE c.id = 1;
		PERFORM pg_sleep(0.05);
		UPDATE public.counter SET v = seen + 1 WHERE id = 1;
		PERFORM smartconnector.record('counter-1', 'updated');
	END $$;
	GRANT EXECUTE ON FUNCTION public.bump(jsonb) TO regress_etl;
	SELECT smartconnector.create_connector('Bump', 'bump', handler => 'public.bump(jsonb)',
		run_as => 'regress_etl', status => 'operational', max_concurrent_executions => 4);
	SELECT smartconnector.trigger('bump') FROM generate_series(1, 8);
});
wait_until($node, q{SELECT count(*) = 8 FROM smartconnector.execution e
	JOIN smartconnector.connector c ON c.id = e.connector_id
	WHERE c.api_name = 'bump' AND e.state = 'success'}, 'all parallel executions succeed');
is($node->safe_psql('postgres', 'SELECT v FROM public.counter WHERE id = 1'), '8',
	'no update was lost: lock_record serialised the read-modify-write');
ok($node->safe_psql('postgres', q{
	SELECT count(*) FROM smartconnector.execution a, smartconnector.execution b
	 WHERE a.connector_id = b.connector_id AND a.id < b.id
	   AND a.connector_id = smartconnector.connector_id('bump')
	   AND a.started_at < b.ended_at AND b.started_at < a.ended_at}) > 0,
	'the executions did run in parallel');

# --- idle executors leave, and come back on demand ---
wait_until($node, q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'smartconnector executor'},
	'idle executors exit after executor_idle_timeout');
my $later = run_and_wait($node, 'loader', '{"rows": 1}');
is(execution_field($node, $later, 'state'), 'success', 'a new executor starts for new work');

$holder->quit;
# --- a procedure as handler: called with CALL, its work commits with the end state ---
$node->safe_psql('postgres', q{
	CREATE PROCEDURE public.load_proc(ctx jsonb) LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.target VALUES ('proc-' || (ctx ->> 'execution_id'), 1);
		PERFORM smartconnector.record('proc-' || (ctx ->> 'execution_id'), 'created');
	END $$;
	GRANT EXECUTE ON PROCEDURE public.load_proc(jsonb) TO regress_etl;
	SELECT smartconnector.create_connector('Proc', 'proc', handler => 'public.load_proc(jsonb)',
		run_as => 'regress_etl', status => 'operational');
});
my $proc = run_and_wait($node, 'proc', '{}');
is(execution_field($node, $proc, "state || ' ' || records_created"), 'success 1', 'a procedure handler runs (CALL)');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.target WHERE k = 'proc-$proc'"),
	'1', 'and its write is committed');

done_testing();
