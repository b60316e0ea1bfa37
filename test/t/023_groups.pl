# Grouping (smartconnector.group_size, group_window): an executor runs
# several executions of short handlers in one transaction, each in a
# subtransaction of its own, and the guarantees hold:
#  - each grouped handler gets a session reset as an execution alone does;
#  - one failing handler never fails or rolls back another's execution, in
#    the handler or at the group's commit (a deferred constraint);
#  - a handler slower than group_window / group_size is not grouped.
# Which executions shared a transaction is read from the commit timestamp
# of their end (subtransactions commit with their transaction).  One
# executor, so that groups are deterministic.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until);

my $node = new_node('groups', conf => q{
smartconnector.max_workers = 1
smartconnector.executor_idle_timeout = 600
smartconnector.group_size = 8
smartconnector.group_window = 1000
track_commit_timestamp = on
});
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_etl LOGIN;
	CREATE TABLE public.t (execution_id bigint PRIMARY KEY, leaked text NOT NULL);
	CREATE TABLE public.parent (id int PRIMARY KEY);
	CREATE TABLE public.child (parent_id int REFERENCES public.parent DEFERRABLE INITIALLY DEFERRED);
	GRANT INSERT ON public.t, public.child TO regress_etl;
	-- what one run could leave to the next in its session, and what it writes
	CREATE FUNCTION public.h(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF ctx -> 'input' ? 'slow' THEN
			PERFORM pg_sleep(0.3);
		END IF;
		IF ctx -> 'input' ? 'fail' THEN
			RAISE EXCEPTION 'handler failed on purpose';
		END IF;
		INSERT INTO public.t VALUES ((ctx ->> 'execution_id')::bigint, concat_ws(',',
			CASE WHEN to_regclass('pg_temp.leak') IS NOT NULL THEN 'temp table' END,
			CASE WHEN current_setting('regress.leak', true) <> '' THEN 'setting' END,
			CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
			                     AND objid = 42 AND pid = pg_backend_pid()) THEN 'advisory lock' END,
			CASE WHEN EXISTS (SELECT 1 FROM pg_prepared_statements) THEN 'prepared statement' END,
			CASE WHEN EXISTS (SELECT 1 FROM pg_cursors) THEN 'cursor' END,
			CASE WHEN current_user <> 'regress_etl' OR session_user <> 'regress_etl' THEN 'role' END));
		CREATE TEMP TABLE leak (i int);
		PERFORM set_config('regress.leak', 'x', false);
		PERFORM pg_advisory_lock(42);
		EXECUTE 'PREPARE leak AS SELECT 1';
		EXECUTE 'DECLARE leak CURSOR WITH HOLD FOR SELECT 1';
		IF ctx -> 'input' ? 'bad_ref' THEN
			INSERT INTO public.child VALUES (-1);	-- fails at commit
		END IF;
	END $$;
	SELECT smartconnector.create_connector('Grouped', 'grouped', handler => 'public.h(jsonb)',
		run_as => 'regress_etl', status => 'operational', max_concurrent_executions => 8);
	SELECT smartconnector.create_connector('Slow', 'slow', handler => 'public.h(jsonb)',
		run_as => 'regress_etl', status => 'operational', max_concurrent_executions => 8);
});

# Queue the inputs while the connector is paused, release them at once, wait
# for every one to end; returns their ids.
sub run_batch
{
	my ($api_name, @inputs) = @_;
	$node->safe_psql('postgres', "UPDATE smartconnector.connector SET max_concurrent_executions = 0 WHERE api_name = '$api_name'");
	my @ids = map {
		$node->safe_psql('postgres', "SET client_min_messages = warning; SELECT smartconnector.trigger('$api_name', '$_')")
	} @inputs;
	$node->safe_psql('postgres', "UPDATE smartconnector.connector SET max_concurrent_executions = 8 WHERE api_name = '$api_name'");
	my $list = join(',', @ids);
	wait_until($node, "SELECT count(*) = 0 FROM smartconnector.execution WHERE id IN ($list) AND state IN ('queued', 'running')",
		"the $api_name batch of " . scalar(@ids) . ' ends');
	return @ids;
}

# the number of transactions the ends of these executions committed in
sub transactions
{
	my $list = join(',', @_);
	return $node->safe_psql('postgres',
		"SELECT count(DISTINCT pg_xact_commit_timestamp(xmin)) FROM smartconnector.execution WHERE id IN ($list)");
}

sub states
{
	my $list = join(',', @_);
	return $node->safe_psql('postgres',
		"SELECT string_agg(state::text, ',' ORDER BY id) FROM smartconnector.execution WHERE id IN ($list)");
}

# a connector's first run in an executor runs alone: it shows how long its handler takes
run_batch('grouped', '{}');
run_batch('slow', '{"slow": true}');

my @ids = run_batch('grouped', ('{}') x 8);
is(states(@ids), join(',', ('success') x 8), 'eight short executions succeed');
is(transactions(@ids), 1, 'and end in one transaction');
is($node->safe_psql('postgres', 'SELECT count(*) FROM public.t WHERE execution_id IN (' . join(',', @ids) . ')'),
	8, 'each with its handler\'s write');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT leaked, ';') FROM public.t WHERE leaked <> ''}),
	'', 'no handler saw a temporary table, setting, advisory lock, prepared statement, cursor or role of the one before');

# a handler that fails: recorded only when it ran first in its transaction
@ids = run_batch('grouped', '{}', '{"fail": 1}', '{}', '{"fail": 2}', '{}', '{}');
is(states(@ids), 'success,failed,success,failed,success,success',
	'failing handlers fail alone, the others succeed');
is($node->safe_psql('postgres', "SELECT string_agg(DISTINCT error, ';') FROM smartconnector.execution WHERE id IN ($ids[1], $ids[3])"),
	'handler failed on purpose', 'each with its own error');
is($node->safe_psql('postgres', 'SELECT string_agg(execution_id::text, \',\' ORDER BY execution_id) FROM public.t WHERE execution_id IN (' . join(',', @ids) . ')'),
	join(',', @ids[0, 2, 4, 5]), 'every successful handler\'s write committed, once');
cmp_ok(transactions(@ids), '<', scalar(@ids), 'the successful ones were still grouped');

# a handler whose work fails only at commit: the group's commit fails, and each runs again alone
my $log_offset = -s $node->logfile;
@ids = run_batch('grouped', '{}', '{"bad_ref": true}', '{}', '{}');
is(states(@ids), 'success,failed,success,success',
	'a deferred constraint fails only the execution whose handler broke it');
like($node->safe_psql('postgres', "SELECT error FROM smartconnector.execution WHERE id = $ids[1]"),
	qr/violates foreign key constraint/, 'with the constraint\'s error');
is($node->safe_psql('postgres', 'SELECT count(*) FROM public.t WHERE execution_id IN (' . join(',', @ids) . ')'),
	3, 'the others\' writes committed, once each');
is($node->safe_psql('postgres', 'SELECT count(*) FROM public.child'), 0, 'the broken write did not');
like(slurp_file($node->logfile, $log_offset), qr/a transaction of 4 executions failed; each runs again alone/,
	'the log says the group ran again alone');

# a handler slower than group_window / group_size is not grouped
@ids = run_batch('slow', ('{"slow": true}') x 3);
is(states(@ids), 'success,success,success', 'slow executions succeed');
is(transactions(@ids), 3, 'each in a transaction of its own');

$node->stop;
done_testing();
