# The executor pool is shared by the run_as roles: an executor serves the
# one role it connects as, each role with work gets a fair share of the
# slots, and a role's backlog never holds another role's work back for
# longer than the execution in progress.  A role no executor can connect as
# fails its executions, saying why.  An external runner's claim ends with
# its session or a DISCARD ALL, never with pg_advisory_unlock_all().
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until);

my $node = new_node('pool', conf => "smartconnector.max_workers = 2\n"
	  . "smartconnector.executor_idle_timeout = 1\nmax_prepared_transactions = 2\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_a LOGIN;
	CREATE ROLE regress_b LOGIN;
	CREATE ROLE regress_c LOGIN;
	CREATE FUNCTION public.work(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF ctx -> 'input' ? 'wait_lock' THEN
			PERFORM pg_advisory_lock((ctx -> 'input' ->> 'wait_lock')::bigint);
			PERFORM pg_advisory_unlock((ctx -> 'input' ->> 'wait_lock')::bigint);
		END IF;
	END $$;
	SELECT smartconnector.create_connector('A', 'a', handler => 'public.work(jsonb)',
		run_as => 'regress_a', status => 'operational', max_concurrent_executions => 4);
	SELECT smartconnector.create_connector('B', 'b', handler => 'public.work(jsonb)',
		run_as => 'regress_b', status => 'operational');
	SELECT smartconnector.create_connector('C', 'c', handler => 'public.work(jsonb)',
		run_as => 'regress_c', status => 'operational', max_concurrent_executions => 0);
	SELECT smartconnector.create_connector('Ext', 'ext', status => 'operational',
		max_concurrent_executions => 2);
});

sub state_of
{
	my ($id) = @_;
	return $node->safe_psql('postgres', "SELECT state FROM smartconnector.execution WHERE id = $id");
}

my ($ret, $out, $err);

# --- one role's backlog does not hold another role's work back ---
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(501), pg_advisory_lock(502)');
my @a = split /\n/, $node->safe_psql('postgres', q{
	SELECT smartconnector.trigger('a', jsonb_build_object('wait_lock', CASE WHEN n <= 2 THEN 501 ELSE 502 END))
	  FROM generate_series(1, 4) n ORDER BY 1});
wait_until($node, "SELECT count(*) = 2 FROM smartconnector.execution WHERE id IN ($a[0], $a[1]) AND state = 'running'",
	'the first two of A run, in both slots of the pool');
is($node->safe_psql('postgres', q{SELECT string_agg(role || ' ' || state, ', ' ORDER BY slot) FROM smartconnector.executors}),
	'regress_a busy, regress_a busy', 'the pool shows two busy executors of A');
my $b;
($ret, $b, $err) = $node->psql('postgres', q{SELECT smartconnector.trigger('b')});
like($err, qr/NOTICE:  execution $b waits for an executor: all 2 are busy/,
	'trigger() says that the new execution waits for an executor, and why');
wait_until($node, q{SELECT count(*) = 1 FROM smartconnector.executors WHERE state = 'retiring'},
	'B has work and no slot: an executor of A, over its share, is asked to make room');
$holder->query_safe('SELECT pg_advisory_unlock(501)');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $b",
	'once A\'s executions in progress end, B runs');
is(state_of($a[2]) . ' ' . state_of($a[3]), 'running queued',
	'while A\'s backlog still waits: B did not wait for it');
$holder->query_safe('SELECT pg_advisory_unlock(502)');
wait_until($node, "SELECT count(*) = 4 FROM smartconnector.execution WHERE id IN (" . join(',', @a) . ") AND state = 'success'",
	'then A\'s backlog drains');
$holder->quit;

# --- more roles with work than slots: the roles take turns ---
# (found by an attack review: the least busy role got no share at all and
# waited for the others' backlogs to drain)
$node->safe_psql('postgres', q{
	CREATE ROLE regress_d LOGIN;
	SELECT smartconnector.create_connector('D', 'd', handler => 'public.work(jsonb)',
		run_as => 'regress_d', status => 'operational', max_concurrent_executions => 2);
	SELECT smartconnector.set_max_concurrent_executions('b', 2);
});
$holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(601), pg_advisory_lock(602)');
my @ab = split /\n/, $node->safe_psql('postgres', q{
	SELECT smartconnector.trigger(c, jsonb_build_object('wait_lock', CASE WHEN n = 1 THEN 601 ELSE 602 END))
	  FROM unnest(ARRAY['a', 'b']) c, generate_series(1, 3) n ORDER BY 1});
wait_until($node, q{SELECT string_agg(role::text, ' ' ORDER BY role) = 'regress_a regress_b'
	FROM smartconnector.executors WHERE state = 'busy'},
	'A and B each run one execution, in the two slots');
my $d = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('d')});
wait_until($node, q{SELECT count(*) = 1 FROM smartconnector.executors WHERE state = 'retiring'},
	'D has work and no slot: the executor that has served longest is asked to make room');
$holder->query_safe('SELECT pg_advisory_unlock(601)');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $d",
	'D runs as soon as an execution in progress ends');
# (counted at D's start: once D has run, its slot may rightly go back to A or B)
ok($node->safe_psql('postgres', "SELECT count(*) FROM smartconnector.execution WHERE id IN ("
	. join(',', @ab) . ") AND (started_at IS NULL OR started_at > (SELECT started_at FROM smartconnector.execution WHERE id = $d))") >= 3,
	'while A\'s and B\'s backlogs wait: at least three of them start after D');
$holder->query_safe('SELECT pg_advisory_unlock(602)');
wait_until($node, "SELECT count(*) = 6 FROM smartconnector.execution WHERE id IN (" . join(',', @ab) . ") AND state = 'success'",
	'then the backlogs drain');
$holder->quit;

# --- a settings change left open does not stall the launcher for everyone ---
# (found by an attack review: the launcher waited for its lock)
my $stuck = $node->background_psql('postgres');
my $dead = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
is($stuck->query_safe(q{SELECT smartconnector.claim('ext')}), $dead, 'an external runner claims');
my $stuck_pid = $stuck->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($stuck_pid)");
$stuck->{run}->kill_kill;
my $open = $node->background_psql('postgres');
$open->query_safe(q{SET client_min_messages = warning; BEGIN; UPDATE smartconnector.connector SET max_concurrent_executions = 3 WHERE api_name = 'ext'});
wait_until($node, q{SELECT count(*) = 0 FROM smartconnector.executors WHERE role = 'regress_b'},
	'no executor of B is left: only the launcher can start one');
my $bb = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('b')});
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $bb",
	'another role\'s execution starts while the transaction stays open');
$open->query_safe('COMMIT');
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $dead",
	'and the dead runner\'s execution fails once it commits');
$open->quit;

# --- an open cancel() of a queued execution holds up only that connector (second attack review) ---
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('B2', 'b2', handler => 'public.work(jsonb)',
		run_as => 'regress_b', status => 'operational');
	SELECT smartconnector.set_max_concurrent_executions('b', 0);
});
my @bq = split /\n/, $node->safe_psql('postgres', q{SELECT smartconnector.trigger('b') FROM generate_series(1, 2) ORDER BY 1});
my $canceller = $node->background_psql('postgres');
$canceller->query_safe("BEGIN; SELECT smartconnector.cancel($bq[0])");
$node->safe_psql('postgres', q{SELECT smartconnector.set_max_concurrent_executions('b', 1)});
my $b2 = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('b2')});
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $b2",
	'another connector of the same role runs while the cancel is open');
is($node->safe_psql('postgres', "SELECT state FROM smartconnector.execution WHERE id = $bq[1]"), 'queued',
	'and the execution behind the one being cancelled waits: FIFO');
$canceller->query_safe('COMMIT');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $bq[1]",
	'once the cancel commits, it runs');
$canceller->quit;
($ret, $out, $err) = $node->psql('postgres', q{BEGIN;
	SELECT smartconnector.set_max_concurrent_executions('b', 2);
	PREPARE TRANSACTION 'hold_b'});
like($err, qr/cannot PREPARE a transaction that queued or cancelled an execution or changed what may start/,
	'a settings change cannot be left prepared, holding its admission lock');
# nor the cancel of a queued execution, holding the head of its queue (before:
# it was prepared, and claim() and the executors waited for COMMIT PREPARED)
$node->safe_psql('postgres', q{SELECT smartconnector.create_connector('P', 'p', status => 'operational',
	max_concurrent_executions => 0)});
my $pq = $node->safe_psql('postgres', q{SET client_min_messages = warning; SELECT smartconnector.trigger('p')});
($ret, $out, $err) = $node->psql('postgres', qq{BEGIN;
	SELECT smartconnector.cancel($pq);
	PREPARE TRANSACTION 'hold_p'});
like($err, qr/cannot PREPARE a transaction that queued or cancelled an execution or changed what may start/,
	'a cancel of a queued execution cannot be left prepared');
is($node->safe_psql('postgres', "SELECT state FROM smartconnector.execution WHERE id = $pq"), 'queued',
	'and the execution stays queued');

# --- a role no executor can connect as fails its executions, saying why ---
my $c = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('c')});
$node->safe_psql('postgres', q{ALTER ROLE regress_c NOLOGIN;
	SELECT smartconnector.set_max_concurrent_executions('c', 1)});
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $c",
	'an execution of a connector whose run_as cannot log in fails');
like($node->safe_psql('postgres', "SELECT error || ': ' || (metadata -> 'error' ->> 'detail') FROM smartconnector.execution WHERE id = $c"),
	qr/^connector "c" cannot execute: The run_as role "regress_c" cannot log in/, 'with the reason');
is($node->safe_psql('postgres', q{SELECT status FROM smartconnector.connector WHERE api_name = 'c'}),
	'need_attention', 'and the connector needs attention');
($ret, $out, $err) = $node->psql('postgres', q{SELECT smartconnector.set_status('c', 'operational')});
like($err, qr/cannot be made operational.*cannot log in/s, 'it cannot be made operational again until fixed');

# --- an external runner's claim: DISCARD ALL ends it, pg_advisory_unlock_all() does not ---
my $runner = $node->background_psql('postgres');
my $e1 = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
is($runner->query_safe(q{SELECT smartconnector.claim('ext')}), $e1, 'an external runner claims');
$runner->query_safe('SELECT pg_advisory_unlock_all()');
# a launcher pass that checks every running execution: another runner's session ends
my $other = $node->background_psql('postgres');
my $e2 = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
is($other->query_safe(q{SELECT smartconnector.claim('ext')}), $e2, 'a second runner claims');
my $other_pid = $other->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($other_pid)");
$other->{run}->kill_kill;
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $e2",
	'the launcher fails the execution of the runner that ended');
is(state_of($e1), 'running', 'the runner that called pg_advisory_unlock_all() still holds its claim');
is($runner->query_safe("SELECT smartconnector.finish($e1)"), 'success', 'and finishes it');
my $e3 = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
is($runner->query_safe(q{SELECT smartconnector.claim('ext')}), $e3, 'it claims the next');
$runner->query('DISCARD ALL');
like($runner->{stderr}, qr/WARNING:  DISCARD ALL ended this session's run of execution $e3/,
	'DISCARD ALL (a pooler reusing the session) warns');
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $e3",
	'and ends the claim: the execution fails as a runner that ended');
$runner->{stderr} = '';
$runner->quit;

done_testing();
