# DROP EXTENSION while the workers are busy: the DROP waits for running
# handlers instead of deadlocking against a worker, the workers then go
# quiet (executors exit, nothing logs about missing tables), and they come
# back at the next CREATE EXTENSION.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until start_receiver run_and_wait);

my $dir = PostgreSQL::Test::Utils::tempdir;
my $http = start_receiver($dir);
my $node = new_node('drop', conf => q{
smartconnector.block_private_addresses = off
smartconnector.webhook_retry_schedule = '1s,1s,1s,1s,1s,1s,1s,1s,1s,1s'
});
my $setup = qq{
	CREATE EXTENSION smartconnector;
	SELECT smartconnector.create_connector('Slow', 'slow', status => 'operational',
		handler => 'public.slow(jsonb)', run_as => 'regress_etl', max_concurrent_executions => 2,
		execution_ended_webhook_url => 'http://127.0.0.1:$http->{port}/fail/1000/slow');
	SELECT smartconnector.create_connector('Quick', 'quick', status => 'operational',
		handler => 'public.quick(jsonb)', run_as => 'regress_other',
		execution_ended_webhook_url => 'http://127.0.0.1:$http->{port}/ok');
};
$node->safe_psql('postgres', q{
	CREATE ROLE regress_etl LOGIN;
	CREATE ROLE regress_other LOGIN;
	CREATE TABLE public.done (k text);
	GRANT INSERT ON public.done TO regress_etl, regress_other;
	CREATE FUNCTION public.slow(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.done VALUES ('slow ' || (ctx ->> 'execution_id'));
		PERFORM pg_advisory_lock_shared(77);
	END $$;
	CREATE FUNCTION public.quick(ctx jsonb) RETURNS void LANGUAGE sql AS
		$$ INSERT INTO public.done VALUES ('quick ' || (ctx ->> 'execution_id')) $$;
} . $setup);

# busy: two handlers running, more queued, a webhook retrying, executors of two roles
run_and_wait($node, 'slow', '{}');	# its webhook keeps failing and retrying
run_and_wait($node, 'quick');
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(77)');
$node->safe_psql('postgres', q{
	SELECT smartconnector.trigger('slow') FROM generate_series(1, 4);
	SELECT smartconnector.trigger('quick') FROM generate_series(1, 4);
});
wait_until($node, q{SELECT count(*) = 2 FROM smartconnector.execution WHERE state = 'running'},
	'two handlers are running');

my $dropper = $node->background_psql('postgres', on_error_stop => 0);
my $log_at = -s $node->logfile;
$dropper->query_until(qr/dropping/, q{
	\echo dropping
	DROP EXTENSION smartconnector;
	\echo dropped
});
wait_until($node, q{
	SELECT count(*) = 1 FROM pg_stat_activity
	 WHERE query LIKE 'DROP EXTENSION%' AND wait_event_type = 'Lock'},
	'DROP EXTENSION waits for the running handlers');
$holder->query_safe('SELECT pg_advisory_unlock(77)');
my $out = $dropper->query_safe(q{SELECT 'after the drop'});
like($out, qr/^dropped\nafter the drop$/, 'the DROP finished, without an error');
$dropper->quit;
my $log = slurp_file($node->logfile, $log_at);
unlike($log, qr/deadlock detected/, 'without a deadlock');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_extension WHERE extname = 'smartconnector'}), '0',
	'the extension is gone');
like($node->safe_psql('postgres', q{SELECT string_agg(k, ',') FROM public.done WHERE k LIKE 'slow%'}),
	qr/^slow \d+,slow \d+,slow \d+$/, 'the running handlers finished; no queued one started after the DROP');

wait_until($node, q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'smartconnector executor'},
	'the executors exit');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'smartconnector %'}), '2',
	'the launcher and the dispatcher stay');
$log = slurp_file($node->logfile, $log_at);
unlike($log, qr/ERROR|does not exist/, 'and nothing logs an error about the missing extension');

# back again
$log_at = -s $node->logfile;
$node->safe_psql('postgres', $setup);
my $id = run_and_wait($node, 'quick');
is($node->safe_psql('postgres', "SELECT state FROM smartconnector.execution WHERE id = $id"), 'success',
	'after CREATE EXTENSION, executions run again');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $id",
	'and webhooks are delivered');
$log = slurp_file($node->logfile, $log_at);
unlike($log, qr/ERROR/, 'without errors in the log');

# --- version skew: a new library before ALTER EXTENSION UPDATE (simulated) ---
$log_at = -s $node->logfile;
my $version = $node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'smartconnector'});
$node->safe_psql('postgres', q{UPDATE pg_extension SET extversion = '0.0' WHERE extname = 'smartconnector'});
my @waiting = split /\n/, $node->safe_psql('postgres', q{
	SELECT smartconnector.trigger('quick') FROM generate_series(1, 5)});
wait_until($node, q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'smartconnector executor'},
	'with an extension version the library does not speak, the executors exit');
$node->wait_for_log(qr/smartconnector library [0-9.]+ waits: the database has extension version 0\.0/, $log_at);
$node->safe_psql('postgres', q{SELECT smartconnector.trigger('quick')}) for 1 .. 3;	# wake the launcher again
is($node->safe_psql('postgres', "SELECT count(*) FROM smartconnector.execution WHERE id IN (" . join(',', @waiting) . ") AND state = 'queued'"),
	'5', 'and nothing runs');
$log = slurp_file($node->logfile, $log_at);
my $said = () = $log =~ /waits: the database has extension version/g;
ok($said >= 1 && $said <= 2, "the launcher and the dispatcher said why once each ($said lines), not at every pass");
unlike($log, qr/ERROR/, 'and nothing failed');
$node->safe_psql('postgres', qq{
	UPDATE pg_extension SET extversion = '$version' WHERE extname = 'smartconnector';
	SELECT smartconnector_internal.wake_at_commit();});
wait_until($node, "SELECT count(*) = 5 FROM smartconnector.execution WHERE id IN (" . join(',', @waiting) . ") AND state = 'success'",
	'once the versions agree again, the queued executions run');
$node->wait_for_log(qr/smartconnector extension version \Q$version\E is installed: resuming/, $log_at);

done_testing();
