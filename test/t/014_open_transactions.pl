# One open transaction stalls only the connector it touches.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use SmartConnectorTest qw(new_node wait_until start_receiver run_and_wait);

my $dir = PostgreSQL::Test::Utils::tempdir;
my $http = start_receiver($dir);
my $node = new_node('open', conf => q{
smartconnector.block_private_addresses = off
smartconnector.webhook_retry_schedule = '1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s'
});
$node->safe_psql('postgres', qq{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_etl LOGIN;
	CREATE FUNCTION public.noop(ctx jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	SELECT smartconnector.create_connector('A', 'a', status => 'operational');
	SELECT smartconnector.create_connector('B', 'b', status => 'operational',
		handler => 'public.noop(jsonb)', run_as => 'regress_etl',
		execution_ended_webhook_url => 'http://127.0.0.1:$http->{port}/ok');
	SELECT smartconnector.create_connector('C', 'c', status => 'operational',
		handler => 'public.noop(jsonb)', run_as => 'regress_etl',
		execution_ended_webhook_url => 'http://127.0.0.1:$http->{port}/fail');
});

sub b_runs
{
	my ($what) = @_;
	my $t0 = time;
	my $id = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('b')});
	wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $id", $what);
	wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $id", "$what: its webhook is delivered");
	note(sprintf('%s: %.2f s', $what, time - $t0));
}
b_runs('warm-up');

# 1. an operator's open transaction on a, while a's runner dies
my $runner = $node->background_psql('postgres');
my $a1 = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('a')});
$runner->query_safe(q{SELECT smartconnector.claim('a')});
my $rpid = $runner->query_safe('SELECT pg_backend_pid()');
my $op = $node->background_psql('postgres');
$op->query_safe(q{SET client_min_messages = warning; BEGIN; SELECT smartconnector.set_max_concurrent_executions('a', 2)});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($rpid)");
b_runs('an open settings change of a, a dead runner of a: b still runs');
$op->query_safe('COMMIT');
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $a1", 'after commit, the dead runner\'s execution fails');

# 2. a runner claims in an open transaction (autocommit off)
$node->safe_psql('postgres', q{SELECT smartconnector.trigger('a')});
my $r2 = $node->background_psql('postgres');
$r2->query_safe(q{BEGIN; SELECT smartconnector.claim('a')});
b_runs('a runner claimed in an open transaction: b still runs');
$r2->query_safe('ROLLBACK');

# 3. an open redeliver() of a retrying delivery
my $c1 = run_and_wait($node, 'c');
wait_until($node, "SELECT attempts >= 1 AND state = 'pending' FROM smartconnector.delivery WHERE execution_id = $c1", 'c\'s webhook is retrying');
my $rd = $node->background_psql('postgres');
$rd->query_safe("BEGIN; SELECT smartconnector.redeliver(id) FROM smartconnector.delivery WHERE execution_id = $c1");
wait_until($node, "SELECT next_attempt_at < now() FROM smartconnector.delivery WHERE execution_id = $c1",
	'the retry the open redeliver() holds is due');
b_runs('an open redeliver() of a retrying delivery: b\'s webhook is still sent');
my $attempts = $node->safe_psql('postgres', "SELECT attempts FROM smartconnector.delivery WHERE execution_id = $c1");
$rd->query_safe('ROLLBACK');
wait_until($node, "SELECT attempts > $attempts FROM smartconnector.delivery WHERE execution_id = $c1",
	'after the rollback, the held delivery\'s attempts are recorded again');

# 4. history cleanup, with an open redeliver() of an expired execution's webhook
my $old = run_and_wait($node, 'b');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $old", 'an execution to expire, delivered');
$rd->query_safe("BEGIN; SELECT smartconnector.redeliver(id) FROM smartconnector.delivery WHERE execution_id = $old");
my ($ret, $out, $err) = $node->psql('postgres', q{
	SET statement_timeout = '10s';
	SELECT smartconnector.cleanup(clock_timestamp()) > 0});
is("$ret $out", '0 t', 'cleanup() deletes expired history around a delivery someone holds locked') or diag($err);
is($node->safe_psql('postgres', q{
	SELECT string_agg(x.id::text, ',') FROM smartconnector.execution x
	 WHERE x.state NOT IN ('queued', 'running')
	   AND NOT EXISTS (SELECT FROM smartconnector.delivery d WHERE d.execution_id = x.id AND d.state = 'pending')}),
	$old, 'and keeps, of those without a pending delivery, only the one whose delivery is held');
$rd->query_safe('ROLLBACK');
is($node->safe_psql('postgres', q{SELECT smartconnector.cleanup(clock_timestamp())}), '1',
	'once the transaction ends, the next cleanup deletes it too');

# claim() waiting for an admin who gives the connector a handler: once that
# commits, the connector is the executors' (before: claim() took the execution
# of a connector with a handler, as an external runner)
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('X', 'x', status => 'operational', max_concurrent_executions => 0)});
my $xq = $node->safe_psql('postgres', q{SET client_min_messages = warning; SELECT smartconnector.trigger('x')});
my $admin = $node->background_psql('postgres');
$admin->query_safe(q{BEGIN; UPDATE smartconnector.connector SET handler = 'public.noop(jsonb)',
	run_as = 'regress_etl', max_concurrent_executions = 1 WHERE api_name = 'x'});
my $claimer = $node->background_psql('postgres');
$claimer->query_safe(q{SET application_name = 'claimer'; SET client_min_messages = warning});
$claimer->query_until(qr/claiming/, q{\echo claiming
SELECT coalesce(smartconnector.claim('x')::text, 'none') AS got \gset
});
wait_until($node, q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'claimer' AND wait_event_type = 'Lock'},
	'claim() waits for the admission lock of the settings change');
$admin->query_safe('COMMIT');
$admin->quit;
is($claimer->query_safe(q{SELECT :'got'}), 'none', 'then claims nothing: the connector has a handler now');
$claimer->quit;
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $xq",
	'and an executor runs the execution');

done_testing();
