# Execution timeout (max_duration): a run that takes longer is stopped and
# ends failed with a clear error, whether its handler stops at the query
# cancel, ignores it (its executor is terminated after cancel_grace) or
# catches it and returns; an external runner's session is cut off.  The slot
# is freed for the next execution, and a run within the limit is untouched.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use SmartConnectorTest qw(new_node wait_until);

my $node = new_node('duration', conf => "smartconnector.cancel_grace = '1s'\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_etl LOGIN;
	CREATE TABLE public.written (id bigint, what text);
	GRANT INSERT ON public.written TO regress_etl;
	-- sleeps for input.seconds; input.mode says what it does with a query cancel
	CREATE FUNCTION public.sleeper(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		until timestamptz := clock_timestamp() + make_interval(secs => (ctx -> 'input' ->> 'seconds')::float8);
	BEGIN
		WHILE clock_timestamp() < until LOOP
			BEGIN
				PERFORM pg_sleep(0.05);
			EXCEPTION WHEN query_canceled THEN
				CASE ctx -> 'input' ->> 'mode'
					WHEN 'ignore' THEN NULL;	-- and sleep on
					WHEN 'return' THEN RETURN;	-- pretend it finished
					ELSE RAISE;
				END CASE;
			END;
		END LOOP;
		INSERT INTO public.written VALUES ((ctx ->> 'execution_id')::bigint, 'done');
	END $$;
	ALTER FUNCTION public.sleeper(jsonb) OWNER TO regress_etl;
	SELECT smartconnector.create_connector('Timed', 'timed', status => 'operational',
		handler => 'public.sleeper(jsonb)', run_as => 'regress_etl');
	UPDATE smartconnector.connector SET max_duration = '1 second' WHERE api_name = 'timed';
	SELECT smartconnector.create_connector('External', 'external', status => 'operational');
	UPDATE smartconnector.connector SET max_duration = '1 second' WHERE api_name = 'external';
});

sub trigger
{
	my ($input) = @_;
	return $node->safe_psql('postgres', "SELECT smartconnector.trigger('timed', '$input')");
}

sub ended
{
	my ($id, $what) = @_;
	wait_until($node, "SELECT state NOT IN ('queued', 'running') FROM smartconnector.execution WHERE id = $id",
		"$what: the execution ends");
	return $node->safe_psql('postgres', qq{
		SELECT state || ': ' || coalesce(error, '') || ' / ' || (ended_at - started_at < interval '30 seconds')
		  FROM smartconnector.execution WHERE id = $id});
}

# a handler that stops at the query cancel
my $t0 = time;
my $e1 = trigger('{"seconds": 60}');
my $next = trigger('{"seconds": 0}');
is(ended($e1, 'stops at the cancel'), 'failed: execution exceeded max_duration (00:00:01) / true',
	'a handler running past max_duration fails with a clear error');
note(sprintf('ended after %.1f s', time - $t0));
is($node->safe_psql('postgres', "SELECT metadata -> 'error' ->> 'sqlstate' FROM smartconnector.execution WHERE id = $e1"),
	'57014', 'with SQLSTATE query_canceled in its metadata');
is(ended($next, 'the next one'), 'success:  / true', 'the freed slot admits the next execution');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.written WHERE id = $e1"), '0',
	'the stopped handler wrote nothing');

# a handler that catches the cancel and sleeps on: its executor is terminated
my $e2 = trigger('{"seconds": 60, "mode": "ignore"}');
is(ended($e2, 'ignores the cancel'),
	'failed: execution exceeded max_duration (00:00:01): the handler did not stop, and its executor was terminated / true',
	'a handler that ignores the cancel is terminated after cancel_grace, and the execution fails');
ok($node->log_contains(qr/terminates the executor \(pid \d+\) of execution $e2: its handler did not stop at its max_duration/),
	'the launcher logs why it terminated the executor');

# a handler that catches the cancel and returns as if it had finished
my $e3 = trigger('{"seconds": 60, "mode": "return"}');
like(ended($e3, 'returns after the cancel'), qr/^failed: execution exceeded max_duration \(00:00:01\) \/ true$/,
	'a handler that catches the cancel and returns still fails');

# within the limit: untouched
$node->safe_psql('postgres', q{UPDATE smartconnector.connector SET max_duration = '30 seconds' WHERE api_name = 'timed'});
my $e4 = trigger('{"seconds": 1.5}');
is(ended($e4, 'within the limit'), 'success:  / true', 'a run within max_duration succeeds');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.written WHERE id = $e4"), '1',
	'and its work commits');

# a huge max_duration (the domain takes any positive interval) running beside
# the others: the launcher's check cannot overflow and stop the launcher
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('Forever', 'forever', status => 'operational');
	UPDATE smartconnector.connector SET max_duration = '200000 years' WHERE api_name = 'forever';});
my $forever_runner = $node->background_psql('postgres');
$forever_runner->query_safe('SET client_min_messages = warning');
my $forever = $node->safe_psql('postgres', q{SET client_min_messages = warning; SELECT smartconnector.trigger('forever')});
is($forever_runner->query_safe(q{SELECT smartconnector.claim('forever')}), $forever,
	'a runner claims an execution with a max_duration of 200000 years');

# an external runner: its session is cut off, the execution fails
my $runner = $node->background_psql('postgres', on_error_stop => 0);
my $e5 = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('external')});
is($runner->query_safe(q{SELECT smartconnector.claim('external')}), $e5, 'an external runner claims');
my $runner_pid = $runner->query_safe('SELECT pg_backend_pid()');
is(ended($e5, 'external runner'),
	"failed: execution exceeded max_duration (00:00:01): its runner's session was terminated / true",
	'an external runner past max_duration fails with a clear error');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $runner_pid"), '0',
	"and the runner's session is gone");
$runner->{run}->kill_kill;
is($node->safe_psql('postgres', "SELECT state FROM smartconnector.execution WHERE id = $forever"), 'running',
	'the execution with the huge max_duration runs on');
$forever_runner->quit;
my $log = slurp_file($node->logfile);
unlike($log, qr/out of range/, 'and the launcher never failed on it');

done_testing();
