# Dead runners: an execution whose runner's session or worker died ends
# failed ("runner ended"), promptly, including after a crash (kill -9) and an
# immediate shutdown; queued work is never lost.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use SmartConnectorTest qw(new_node wait_until);

# the test framework turns restart_after_crash off; production keeps it on
my $node = new_node('dead', conf => "restart_after_crash = on\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE TABLE public.written (k text);
	CREATE FUNCTION public.slow(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.written VALUES (ctx ->> 'execution_id');
		PERFORM smartconnector.record('r1', 'created');
		IF ctx -> 'input' ? 'wait_lock' THEN
			PERFORM pg_advisory_lock((ctx -> 'input' ->> 'wait_lock')::bigint);
		END IF;
	END $$;
	SELECT smartconnector.create_connector('Ext', 'ext', status => 'operational');
	SELECT smartconnector.create_connector('Slow', 'slow', handler => 'public.slow(jsonb)',
		status => 'operational');
});

sub state_of
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		"SELECT state || ': ' || coalesce(error, '') FROM smartconnector.execution WHERE id = $id");
}

# Claim an execution of 'ext' in a session of its own; returns (session, id, pid).
sub claim_in_session
{
	my $s = $node->background_psql('postgres');
	my $id = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
	my $got = $s->query_safe(q{SELECT smartconnector.claim('ext')});
	is($got, $id, "a runner session claimed execution $id");
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	return ($s, $id, $pid);
}

# --- a runner that disconnects (its session ends) ---
my ($s1, $e1, $pid1) = claim_in_session();
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid1)");
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $e1",
	'the execution of a runner whose session ended fails');
note(sprintf('detected after %.1f s', time - $t0));
like(state_of($e1), qr/^failed: runner ended before the execution finished/, 'with a clear error');
$s1->{run}->kill_kill;

# --- a runner killed with kill -9 (the server restarts all sessions) ---
my ($s2, $e2, $pid2) = claim_in_session();
my $after = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
kill 'KILL', $pid2;
$s2->{run}->kill_kill;
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $e2",
	'after kill -9 of the runner and the crash restart, its execution fails');
like(state_of($e2), qr/runner ended/, 'as a runner that ended');
is(state_of($after), 'queued: ', 'the execution queued behind it is still queued');

# --- an executor running a handler, at an immediate shutdown ---
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(99)');
my $running = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('slow', '{"wait_lock": 99}')});
my @queued = split /\n/, $node->safe_psql('postgres', q{SELECT smartconnector.trigger('slow') FROM generate_series(1, 3)});
wait_until($node, "SELECT records_total = 1 FROM smartconnector.execution_progress WHERE execution_id = $running",
	'the handler is running');
$node->stop('immediate');
$holder->{run}->kill_kill;
$node->start;
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $running",
	'after an immediate shutdown and restart, the interrupted execution fails');
like(state_of($running), qr/runner ended/, 'as a runner that ended');
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.execution WHERE id IN (" . join(',', @queued) . ") AND state = 'success'",
	'the executions queued before the shutdown run after it: nothing lost');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.written WHERE k = '$running'"), '0',
	'the interrupted handler\'s uncommitted writes are gone');

# --- an executor killed with kill -9 ---
$holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(98)');
my $victim = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('slow', '{"wait_lock": 98}')});
wait_until($node, "SELECT records_total = 1 FROM smartconnector.execution_progress WHERE execution_id = $victim",
	'another handler is running');
my $executor_pid = $node->safe_psql('postgres', "SELECT pid FROM smartconnector.execution_progress WHERE execution_id = $victim");
my $next = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('slow')});
kill 'KILL', $executor_pid;
$holder->{run}->kill_kill;
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $victim",
	'the execution of an executor killed with kill -9 fails');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $next",
	'and the next execution still runs');
is($node->safe_psql('postgres', qq{
	SELECT string_agg(id || ' ' || state, ', ') FROM smartconnector.execution WHERE state IN ('queued', 'running')}),
	"$after queued", 'nothing is left running; only the external execution waits for a runner');

# --- cancel() interrupts what an external runner is doing ---
my $runner = $node->background_psql('postgres', on_error_stop => 0);
is($runner->query_safe(q{SELECT smartconnector.claim('ext')}), $after, 'a runner claimed the queued execution');
my $runner_pid = $runner->query_safe('SELECT pg_backend_pid()');
$runner->query_until(qr/sleeping/, "\\echo sleeping\nSELECT pg_sleep(600);\n");
wait_until($node, "SELECT wait_event = 'PgSleep' FROM pg_stat_activity WHERE pid = $runner_pid",
	'the runner is busy in a long statement');
$node->safe_psql('postgres', "SELECT smartconnector.cancel($after)");
is(state_of($after), 'cancelled: ', 'cancel() ends the external execution at once');
wait_until($node, "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $runner_pid",
	'and interrupts the runner\'s statement');
is($runner->query("SELECT smartconnector.finish($after)"), 'cancelled', 'whose finish() then says cancelled');
$runner->quit;

done_testing();
