# Queue heads: executors find connectors with work through one row per
# connector (smartconnector_internal.queue_head), whatever their number.
# The rows must never be missing for a connector with queued work: an
# admission that empties a queue keeps the row while another transaction is
# queueing an execution of it, and the launcher repairs what no one else can
# see (a handler set on a connector with a backlog, rows lost to a restore).
# More connectors with work than the executors' candidate list holds all
# run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until);

my $node = new_node('heads', conf => "smartconnector.max_workers = 2\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_etl LOGIN;
	CREATE FUNCTION public.noop(ctx jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	SELECT smartconnector.create_connector('X', 'x', handler => 'public.noop(jsonb)',
		run_as => 'regress_etl', status => 'operational');
	SELECT smartconnector.create_connector('Later', 'later', status => 'operational');
});
my $heads = q{SELECT count(*) FROM smartconnector_internal.queue_head h
	JOIN smartconnector.connector c ON c.id = h.connector_id WHERE c.api_name = };

# an execution being queued while an executor empties the queue
my $open = $node->background_psql('postgres');
$open->query_safe('SET client_min_messages = warning');
$open->query_safe('BEGIN');
my $pending = $open->query_safe(q{SELECT smartconnector.trigger('x')});
my $other = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('x')});
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $other",
	'an execution queued meanwhile runs');
is($node->safe_psql('postgres', $heads . q{'x'}), '1',
	'the admission that emptied the queue kept the head row: an execution of it was being queued');
$open->query_safe('COMMIT');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $pending",
	'the execution queued in the open transaction runs after its commit');
wait_until($node, "SELECT (" . $heads . q{'x'} . ") = 0", 'and then the empty queue has no head row');

# a handler set on a connector with a backlog
my @later = split /\n/, $node->safe_psql('postgres', q{
	SET client_min_messages = warning;
	SELECT smartconnector.trigger('later') FROM generate_series(1, 3)});
is($node->safe_psql('postgres', $heads . q{'later'}), '0', 'a connector without a handler has no head row');
$node->safe_psql('postgres', q{
	UPDATE smartconnector.connector SET handler = 'public.noop(jsonb)', run_as = 'regress_etl'
	 WHERE api_name = 'later'});
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.execution WHERE id IN (" . join(',', @later)
	  . ") AND state = 'success'", 'once it has a handler, its backlog runs (the launcher added its head)');

# a paused backlog keeps no head row, so executors never walk past it; resuming brings it back
$node->safe_psql('postgres', q{UPDATE smartconnector.connector SET max_concurrent_executions = 0 WHERE api_name = 'x'});
my @paused = split /\n/, $node->safe_psql('postgres', q{
	SET client_min_messages = warning;
	SELECT smartconnector.trigger('x') FROM generate_series(1, 3)});
wait_until($node, "SELECT (" . $heads . q{'x'} . ") = 0", 'a paused connector with a backlog has no head row');
$node->safe_psql('postgres', q{SELECT smartconnector.set_max_concurrent_executions('x', 1)});
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.execution WHERE id IN (" . join(',', @paused)
	  . ") AND state = 'success'", 'once resumed, its backlog runs');

# head rows lost (as after a restore of the queue): the launcher repairs them
my @lost = split /\n/, $node->safe_psql('postgres', q{
	SET client_min_messages = warning;
	BEGIN;
	SELECT smartconnector.trigger('x') FROM generate_series(1, 3);
	DELETE FROM smartconnector_internal.queue_head;
	COMMIT;});
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.execution WHERE id IN (" . join(',', @lost)
	  . ") AND state = 'success'", 'executions whose head row was lost still run');

# more connectors with work than an executor's candidate list (256)
$node->safe_psql('postgres', q{
	SELECT count(smartconnector.create_connector('Many ' || i, 'many_' || i, handler => 'public.noop(jsonb)',
		run_as => 'regress_etl', status => 'operational', max_concurrent_executions => 0))
	  FROM generate_series(1, 300) i;
	SET client_min_messages = warning;
	SELECT count(smartconnector.trigger('many_' || i)) FROM generate_series(1, 300) i;
	UPDATE smartconnector.connector SET max_concurrent_executions = 1 WHERE api_name LIKE 'many\_%';});
wait_until($node, q{SELECT count(*) = 300 FROM smartconnector.execution e
	JOIN smartconnector.connector c ON c.id = e.connector_id
	WHERE c.api_name LIKE 'many\_%' AND e.state = 'success'},
	'300 connectors with one execution each all run');
is($node->safe_psql('postgres', 'SELECT count(*) FROM smartconnector_internal.queue_head'), '0',
	'and no head row is left');

done_testing();
