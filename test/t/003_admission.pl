# Admission invariants under real concurrency: several sessions trigger (and
# external runners claim) while limits and statuses change.
#  (a) never more running than the limit in effect when an execution started;
#      after a lowering nothing starts until the running count is below it;
#      in-flight work is never cancelled by a limit or status change
#  (b) FIFO per connector    (c) 0 admits nothing; raising admits the backlog in order
#  (d) connectors do not block each other, (e) nor does an open settings change
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until start_pgbench finish_pgbench);

my $node = new_node('admission', conf => "smartconnector.max_workers = 8\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE FUNCTION public.work(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF ctx -> 'input' ? 'wait_lock' THEN
			PERFORM pg_advisory_lock((ctx -> 'input' ->> 'wait_lock')::bigint);
			PERFORM pg_advisory_unlock((ctx -> 'input' ->> 'wait_lock')::bigint);
		END IF;
		PERFORM pg_sleep(coalesce((ctx -> 'input' ->> 'sleep')::float8, 0));
	END $$;
	SELECT smartconnector.create_connector('A', 'a', handler => 'public.work(jsonb)',
		status => 'operational', max_concurrent_executions => 3);
	SELECT smartconnector.create_connector('B', 'b', handler => 'public.work(jsonb)',
		status => 'operational', max_concurrent_executions => 1);
	SELECT smartconnector.create_connector('Ext', 'ext', status => 'operational',
		max_concurrent_executions => 2);

	-- settings changes with the moment they took effect (RETURNING runs after
	-- the settings trigger took the connector's admission lock, so after any
	-- admission in progress)
	CREATE TABLE public.changes (at timestamptz, api_name text, max integer, status text);
	INSERT INTO public.changes
		SELECT '-infinity', api_name, max_concurrent_executions, status FROM smartconnector.connector;
	CREATE FUNCTION public.change(api text, new_max integer, new_status text) RETURNS void
	LANGUAGE sql AS $$
		WITH u AS (
			UPDATE smartconnector.connector
			   SET max_concurrent_executions = coalesce(new_max, max_concurrent_executions),
				   status = coalesce(new_status::smartconnector.connector_status, status)
			 WHERE api_name = api
			RETURNING clock_timestamp() AS at, max_concurrent_executions, status)
		INSERT INTO public.changes SELECT at, api, max_concurrent_executions, status FROM u
	$$;

	-- for each started execution: the settings in effect and how many others ran then
	CREATE VIEW public.admissions AS
	SELECT c.api_name, x.id, x.started_at,
		   s.max, s.status,
		   (SELECT count(*) FROM smartconnector.execution y
			 WHERE y.connector_id = x.connector_id AND y.id <> x.id
			   AND y.started_at < x.started_at
			   AND (y.ended_at IS NULL OR y.ended_at > x.started_at)) AS others_running
	  FROM smartconnector.execution x
	  JOIN smartconnector.connector c ON c.id = x.connector_id
	  CROSS JOIN LATERAL (SELECT ch.max, ch.status FROM public.changes ch
						   WHERE ch.api_name = c.api_name AND ch.at < x.started_at
						   ORDER BY ch.at DESC LIMIT 1) s
	 WHERE x.started_at IS NOT NULL;
});

sub ended
{
	my ($api) = @_;
	return "(SELECT count(*) FROM smartconnector.execution e JOIN smartconnector.connector c"
	  . " ON c.id = e.connector_id WHERE c.api_name = '$api' AND e.state NOT IN ('queued', 'running'))";
}

# --- (a) under load from 4 sessions while limits and status change ---
my $load = start_pgbench($node,
	q{SELECT smartconnector.trigger(CASE WHEN random() < 0.75 THEN 'a' ELSE 'b' END, '{"sleep": 0.03}');},
	'-c', '4', '-t', '60');
wait_until($node, "SELECT " . ended('a') . " >= 20", 'a is busy');
$node->safe_psql('postgres', "SELECT public.change('a', 1, NULL)");       # lower 3 -> 1
wait_until($node, "SELECT " . ended('a') . " >= 45", 'a continues at the lower limit');
$node->safe_psql('postgres', "SELECT public.change('a', NULL, 'inactive')");
$node->safe_psql('postgres', "SELECT public.change('b', 0, NULL)");       # pause b
finish_pgbench($load, 'four sessions queued 240 executions');
$node->safe_psql('postgres', "SELECT public.change('a', 2, 'operational')");
$node->safe_psql('postgres', "SELECT public.change('b', 1, NULL)");
wait_until($node, "SELECT count(*) = 240 FROM smartconnector.execution WHERE state = 'success'",
	'every execution ends success: limit and status changes cancel nothing');

is($node->safe_psql('postgres', q{
	SELECT count(*) FROM public.admissions WHERE others_running >= max OR status NOT IN ('operational', 'need_attention')}),
	'0', 'no execution started above the limit in effect, nor while its connector was inactive or paused');
is($node->safe_psql('postgres', q{SELECT max(others_running) + 1 FROM public.admissions WHERE api_name = 'a' AND max = 3}),
	'3', 'the limit was reached (3 ran at once), so the check above had teeth');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM public.admissions a
	 WHERE a.api_name = 'a'
	   AND a.started_at > (SELECT min(at) FROM public.changes WHERE api_name = 'a' AND max = 1)
	   AND a.started_at < (SELECT min(at) FROM public.changes WHERE api_name = 'a' AND status = 'inactive')
	   AND a.others_running > 0}),
	'0', 'after lowering 3 -> 1, nothing started until fewer than 1 ran');

# --- (b)+(c) a paused backlog is admitted in order when the limit is raised ---
$node->safe_psql('postgres', q{
	SELECT public.change('a', 0, NULL);
	SELECT smartconnector.trigger('a', '{"sleep": 0.01}') FROM generate_series(1, 30);
});
# B's executions are queued after A's; once B's has run, executors had every
# chance to take A's backlog, and took none.
my $b = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('b')});
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $b",
	'b runs while a is paused');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM smartconnector.execution e WHERE e.connector_id = smartconnector.connector_id('a')
	   AND e.state = 'queued'}), '30', 'limit 0 admits nothing');
$node->safe_psql('postgres', "SELECT public.change('a', 3, NULL)");
wait_until($node, "SELECT count(*) = 0 FROM smartconnector.execution WHERE state IN ('queued', 'running')",
	'raising the limit admits the backlog');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM smartconnector.execution x JOIN smartconnector.execution y
	    ON x.connector_id = y.connector_id AND x.id < y.id
	 WHERE x.connector_id = smartconnector.connector_id('a')
	   AND x.queued_at > (SELECT max(at) FROM public.changes WHERE max = 0 AND api_name = 'a')
	   AND x.started_at > y.started_at}),
	'0', 'the backlog started in queue order (FIFO)');

# --- (d) a connector stuck at its limit does not block another ---
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(777)');
my $stuck = $node->safe_psql('postgres', q{
	SELECT public.change('a', 1, NULL);
	SELECT smartconnector.trigger('a', '{"wait_lock": 777}');});
wait_until($node, "SELECT state = 'running' FROM smartconnector.execution WHERE id = $stuck", 'a is stuck running');
my $queued_a = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('a')});
my @bs = split /\n/, $node->safe_psql('postgres', q{SELECT smartconnector.trigger('b') FROM generate_series(1, 3)});
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.execution WHERE id IN (" . join(',', @bs) . ") AND state = 'success'",
	'b executes while a is at its limit');
is($node->safe_psql('postgres', "SELECT state FROM smartconnector.execution WHERE id = $queued_a"),
	'queued', 'a\'s next execution waits for its slot');
$holder->query_safe('SELECT pg_advisory_unlock(777)');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $queued_a",
	'and starts once the slot is free');
$holder->quit;

# --- (e) a session changing a connector's settings, its transaction left
# open, holds up that connector only: executors pass over it ---
$holder = $node->background_psql('postgres');
$holder->query_safe(q{SET client_min_messages = warning; BEGIN; UPDATE smartconnector.connector SET max_concurrent_executions = 2 WHERE api_name = 'a'});
my $held_a = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('a')});
@bs = split /\n/, $node->safe_psql('postgres', q{SELECT smartconnector.trigger('b') FROM generate_series(1, 3)});
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.execution WHERE id IN (" . join(',', @bs) . ") AND state = 'success'",
	'b executes while a settings change of a is uncommitted');
is($node->safe_psql('postgres', "SELECT state FROM smartconnector.execution WHERE id = $held_a"),
	'queued', 'a waits for the change to commit');
$holder->query_safe('COMMIT');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $held_a",
	'and starts once it has');
$holder->quit;

# --- external runners: six sessions claim and finish under limit 2 ---
$node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext') FROM generate_series(1, 60)});
my $runners = start_pgbench($node, q{
SELECT coalesce(smartconnector.claim('ext'), 0) AS id \gset
\if :id > 0
SELECT smartconnector.record('r' || :id, 'created');
SELECT pg_sleep(0.01);
SELECT smartconnector.finish(:id);
\endif
}, '-c', '6', '-t', '40');
finish_pgbench($runners, 'six external runners claim concurrently');
# the runners gave up after 40 attempts each (many found the limit reached);
# drain what is left from one session
for (1 .. 60)
{
	last if $node->safe_psql('postgres', q{
		SELECT coalesce(smartconnector.claim('ext'), 0) AS id \gset
		SELECT CASE WHEN :id > 0 THEN smartconnector.finish(:id)::text ELSE 'empty' END;}) eq 'empty';
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM smartconnector.execution e
	WHERE e.connector_id = smartconnector.connector_id('ext') AND e.state = 'success'}),
	'60', 'every claimed execution was finished exactly once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM public.admissions WHERE api_name = 'ext' AND others_running >= 2}),
	'0', 'never more than 2 external runners held executions at once');
is($node->safe_psql('postgres', q{SELECT max(others_running) + 1 FROM public.admissions WHERE api_name = 'ext'}),
	'2', 'two did run at once');

done_testing();
