# Fairness between the connectors of one role: when every executor is busy,
# a connector with queued work and nothing running gets the next free
# executor before a connector that already has executions in flight, even
# when the busy one's backlog is older; within each connector's limit and
# order.  Deterministic: each handler of the busy connector waits for an
# advisory lock of its own that the test holds, so exactly one executor
# frees up at a time.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until);

my $node = new_node('fair', conf => "smartconnector.max_workers = 2\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_etl LOGIN;
	CREATE FUNCTION public.work(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF ctx -> 'input' ? 'wait_lock' THEN
			PERFORM pg_advisory_lock_shared((ctx -> 'input' ->> 'wait_lock')::bigint);
		END IF;
	END $$;
	SELECT smartconnector.create_connector('Busy', 'busy', handler => 'public.work(jsonb)',
		run_as => 'regress_etl', status => 'operational', max_concurrent_executions => 2);
	SELECT smartconnector.create_connector('Idle', 'idle', handler => 'public.work(jsonb)',
		run_as => 'regress_etl', status => 'operational');
	SELECT smartconnector.create_connector('Idle too', 'idle_too', handler => 'public.work(jsonb)',
		run_as => 'regress_etl', status => 'operational');
});

# the test holds one lock per execution of the busy connector
my $locks = $node->background_psql('postgres');
$locks->query_safe('SELECT pg_advisory_lock(k) FROM generate_series(101, 110) k');
my @busy = map {
	$node->safe_psql('postgres', "SELECT smartconnector.trigger('busy', '{\"wait_lock\": $_}')")
} 101 .. 110;
wait_until($node, "SELECT count(*) = 2 FROM smartconnector.execution WHERE state = 'running'",
	'the busy connector takes both executors');
my ($ret, $idle, $err) = $node->psql('postgres', q{SELECT smartconnector.trigger('idle')});
like($err, qr/NOTICE:  execution $idle waits for an executor: all 2 are busy/,
	'trigger() says the new execution waits for the pool');
is($node->safe_psql('postgres', q{
	SELECT string_agg(api_name || ': ' || coalesce(waiting_for, '-'), ', ' ORDER BY api_name)
	  FROM smartconnector.overview}),
	'busy: limit (2 running), idle: the executor pool (all busy), idle_too: -',
	'the overview says what each connector waits for');
my $idle_too = $node->safe_psql('postgres', q{SET client_min_messages = warning; SELECT smartconnector.trigger('idle_too')});

sub state_of
{
	my ($id) = @_;
	return $node->safe_psql('postgres', "SELECT state FROM smartconnector.execution WHERE id = $id");
}
is(state_of($idle), 'queued', 'the idle connector waits while every executor is busy');

# one executor frees up: it serves the idle connector before the busy one's older backlog
$locks->query_safe('SELECT pg_advisory_unlock(101)');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $busy[0]",
	'the first busy execution ends');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $idle",
	'the freed executor runs the idle connector next');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $idle_too",
	'and then the other idle connector');
wait_until($node, "SELECT count(*) = 2 FROM smartconnector.execution WHERE state = 'running'",
	'then the busy connector has both executors again');
is($node->safe_psql('postgres', q{
	SELECT string_agg(x.id::text, ',' ORDER BY x.id) FROM smartconnector.execution x
	 WHERE x.connector_id = smartconnector.connector_id('busy') AND x.state <> 'queued'}),
	join(',', @busy[0 .. 2]), 'the busy connector admitted only its next one, in order');
ok($node->safe_psql('postgres', qq{
	SELECT i.started_at < b.started_at
	  FROM smartconnector.execution i, smartconnector.execution b
	 WHERE i.id = $idle_too AND b.id = $busy[2]}) eq 't',
	'the idle connectors started before the busy backlog went on');

$locks->query_safe('SELECT pg_advisory_unlock_all()');
wait_until($node, "SELECT count(*) = 0 FROM smartconnector.execution WHERE state IN ('queued', 'running')",
	'the backlog drains');
is($node->safe_psql('postgres', q{
	SELECT max(n) FROM (
		SELECT count(*) AS n FROM smartconnector.execution a JOIN smartconnector.execution b
		    ON a.connector_id = b.connector_id AND b.started_at <= a.started_at AND b.ended_at > a.started_at
		 WHERE a.connector_id = smartconnector.connector_id('busy') GROUP BY a.id) s}),
	'2', 'the busy connector never ran more than its limit of 2');
$locks->quit;

done_testing();
