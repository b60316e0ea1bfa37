# Handlers are untrusted code: each runs in a session that is its run_as
# role and nothing else, and nothing of one run reaches the next.  Attacks
# from issue 10, each of which worked through the executor before:
#  - a deferred trigger queued by a handler fired at commit as superuser;
#  - session state (a temp table with a trigger, prepared statements, held
#    cursors, advisory locks, settings) survived into later runs,
#    also of other connectors running as other roles;
#  - pg_advisory_unlock_all() in a handler freed the execution's slot, and
#    a second execution ran beside it under limit 1;
#  - the role's own settings (ALTER ROLE ... SET) and session_user were not
#    those of run_as.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until run_and_wait execution_field);

# One executor slot, so that every run shares one pool (before the fix, one process).
my $node = new_node('sessions', conf => "smartconnector.max_workers = 1\n"
	  . "smartconnector.cancel_grace = 1s\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_low LOGIN;
	CREATE SCHEMA low AUTHORIZATION regress_low;
	CREATE TABLE public.orders_archive (id integer, note text);
	GRANT INSERT, SELECT ON public.orders_archive TO regress_low;
	CREATE TABLE public.seen (run text, probe jsonb);
	GRANT INSERT ON public.seen TO regress_low;
	SELECT smartconnector.create_connector('Ext', 'ext', status => 'operational');
});

# Run SQL as regress_low (the handler author).
sub as_low
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', "SET ROLE regress_low; $sql");
}



sub is_superuser
{
	my ($role) = @_;
	return $node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = '$role'");
}

# --- a deferred trigger queued by the handler fires at commit as run_as ---
as_low(q{
	CREATE FUNCTION low.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		ALTER ROLE regress_low SUPERUSER;
		RETURN NULL;
	END $$;
	CREATE FUNCTION low.plant(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		CREATE TEMP TABLE armed (x integer);
		CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON armed
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION low.escalate();
		INSERT INTO armed VALUES (1);
	END $$;
});
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('Plant', 'plant', handler => 'low.plant(jsonb)',
		run_as => 'regress_low', status => 'operational')});
my $plant = run_and_wait($node, 'plant');
is(is_superuser('regress_low'), 'f', 'a deferred trigger of the handler does not run as superuser');
is(execution_field($node, $plant, 'state'), 'failed', 'the run whose commit-time trigger failed ends failed');
like(execution_field($node, $plant, 'error'), qr/superuser/, 'with the error of the refused ALTER ROLE');

# --- a temp table planted by one role's run does not capture another role's rows ---
as_low(q{
	CREATE TABLE low.captured (id integer, note text);
	CREATE FUNCTION low.capture() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = low AS $$
	BEGIN
		INSERT INTO low.captured VALUES (NEW.id, NEW.note);
		RETURN NEW;
	END $$;
	GRANT EXECUTE ON FUNCTION low.capture() TO PUBLIC;
	CREATE FUNCTION low.trap(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		CREATE TEMP TABLE orders_archive (id integer, note text);
		CREATE TRIGGER copy_out BEFORE INSERT ON orders_archive
			FOR EACH ROW EXECUTE FUNCTION low.capture();
	END $$;
});
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.archive(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO orders_archive VALUES ((ctx ->> 'execution_id')::int, 'confidential');
	END $$;
	SELECT smartconnector.create_connector('Trap', 'trap', handler => 'low.trap(jsonb)',
		run_as => 'regress_low', status => 'operational');
	SELECT smartconnector.create_connector('Archive', 'archive', handler => 'public.archive(jsonb)',
		status => 'operational');
});
my $trap = run_and_wait($node, 'trap');
is(execution_field($node, $trap, 'state'), 'success', 'the trap is set');
my $archive = run_and_wait($node, 'archive');
is(execution_field($node, $archive, 'state'), 'success', 'a later run of another role inserts into orders_archive');
is($node->safe_psql('postgres', "SELECT count(*) FROM public.orders_archive WHERE id = $archive"),
	'1', 'the row lands in the real table');
is($node->safe_psql('postgres', 'SELECT count(*) FROM low.captured'),
	'0', 'and not in the temp table another role planted');

# --- nothing of a run survives into the next run of the same role ---
as_low(q{
	CREATE FUNCTION low.probe(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	DECLARE
		seen jsonb := jsonb_build_object(
			'temp_table', to_regclass('pg_temp.leftover') IS NOT NULL,
			'prepared', (SELECT count(*) FROM pg_prepared_statements),
			'cursors', (SELECT count(*) FROM pg_cursors),
			'advisory', (SELECT count(*) FROM pg_locks
						  WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
			'work_mem', current_setting('work_mem'),
			'app', coalesce(current_setting('smartconnector_test.leftover', true), ''));
	BEGIN
		INSERT INTO public.seen VALUES (ctx -> 'input' ->> 'run', seen);
		IF ctx -> 'input' ->> 'run' = 'first' THEN
			CREATE TEMP TABLE leftover (x integer);
			EXECUTE 'PREPARE leftover_stmt AS SELECT 1';
			EXECUTE 'DECLARE leftover_cursor CURSOR WITH HOLD FOR SELECT 1';
			PERFORM pg_advisory_lock(777);
			PERFORM set_config('work_mem', '1234kB', false);
			PERFORM set_config('smartconnector_test.leftover', 'yes', false);
		END IF;
		RETURN seen;
	END $$;
});
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('Probe', 'probe', handler => 'low.probe(jsonb)',
		run_as => 'regress_low', status => 'operational')});
my $first = run_and_wait($node, 'probe', '{"run": "first"}');
is(execution_field($node, $first, 'state'), 'success', 'the first run leaves state behind');
my $second = run_and_wait($node, 'probe', '{"run": "second"}');
is($node->safe_psql('postgres', q{SELECT probe::text FROM public.seen WHERE run = 'second'}),
	'{"app": "", "cursors": 0, "advisory": 0, "prepared": 0, "work_mem": "4MB", "temp_table": false}',
	'the next run of the same role sees no temp table, prepared statement, held cursor, advisory lock or setting of it');

# --- pg_advisory_unlock_all() in a handler does not free the execution's slot ---
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.sticky(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_advisory_unlock_all();
		IF ctx -> 'input' ? 'wait_lock' THEN
			PERFORM pg_advisory_lock((ctx -> 'input' ->> 'wait_lock')::bigint);
		END IF;
	END $$;
	SELECT smartconnector.create_connector('Sticky', 'sticky', handler => 'public.sticky(jsonb)',
		status => 'operational', max_concurrent_executions => 1);
});
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(4243)');
my $s1 = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('sticky', '{"wait_lock": 4243}')});
wait_until($node, qq{SELECT count(*) = 1 FROM pg_locks l JOIN smartconnector.execution_progress p ON p.pid = l.pid
	WHERE l.locktype = 'advisory' AND NOT l.granted AND p.execution_id = $s1},
	'the first run has released all advisory locks and waits');
my $s2 = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('sticky')});
# A launcher pass that checks every running execution: an external runner's
# session ends, and the launcher fails that execution in the same pass.
my $runner = $node->background_psql('postgres');
my $ext = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
is($runner->query_safe(q{SELECT smartconnector.claim('ext')}), $ext, 'an external runner claims');
my $runner_pid = $runner->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($runner_pid)");
$runner->{run}->kill_kill;
wait_until($node, "SELECT state = 'failed' FROM smartconnector.execution WHERE id = $ext",
	'the launcher has checked the running executions');
is(execution_field($node, $s1, 'state'), 'running', 'the execution that released its advisory locks still runs');
is(execution_field($node, $s2, 'state'), 'queued', 'and the next one waits: limit 1 holds');
$holder->query_safe('SELECT pg_advisory_unlock(4243)');
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $s2",
	'both end');
is(execution_field($node, $s1, 'state'), 'success', 'the first ends success');
is($node->safe_psql('postgres', "SELECT (SELECT ended_at FROM smartconnector.execution WHERE id = $s1)
	<= (SELECT started_at FROM smartconnector.execution WHERE id = $s2)"), 't', 'one after the other');
$holder->quit;

# --- the handler's session is run_as, with the role's own settings ---
$node->safe_psql('postgres', q{
	CREATE ROLE regress_conf LOGIN;
	CREATE SCHEMA conf;
	ALTER ROLE regress_conf SET search_path = conf, public;
	ALTER ROLE regress_conf SET statement_timeout = '300ms';
	ALTER ROLE regress_conf SET work_mem = '2345kB';
	ALTER ROLE regress_conf SET synchronous_commit = 'remote_apply';
	CREATE FUNCTION public.whoami(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_sleep(coalesce((ctx -> 'input' ->> 'sleep')::float8, 0));
		RETURN jsonb_build_object('session_user', session_user, 'current_user', current_user,
			'calling_role', smartconnector.calling_role(),
			'search_path', current_setting('search_path'),
			'statement_timeout', current_setting('statement_timeout'),
			'work_mem', current_setting('work_mem'),
			'synchronous_commit', current_setting('synchronous_commit'));
	END $$;
	GRANT EXECUTE ON FUNCTION smartconnector.calling_role() TO PUBLIC;
	SELECT smartconnector.create_connector('Whoami', 'whoami', handler => 'public.whoami(jsonb)',
		run_as => 'regress_conf', status => 'operational');
});
my $who = run_and_wait($node, 'whoami');
is(execution_field($node, $who, 'metadata'),
	'{"work_mem": "2345kB", "search_path": "conf, public", "calling_role": "regress_conf", "current_user": "regress_conf", "session_user": "regress_conf", "statement_timeout": "300ms", "synchronous_commit": "remote_apply"}',
	'session_user, current_user, calling_role() and the role\'s settings (synchronous_commit too) are run_as\'s');
my $slow = run_and_wait($node, 'whoami', '{"sleep": 3}');
is(execution_field($node, $slow, "state || ' ' || error"), 'failed canceling statement due to statement timeout',
	'the role\'s statement_timeout limits the handler');

# --- a handler that catches the query cancel cannot outlast cancel() or statement_timeout ---
# (found by an attack review: such a handler held its executor slot forever)
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.stubborn(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	BEGIN
		LOOP
			BEGIN
				PERFORM pg_sleep(0.2);
			EXCEPTION WHEN query_canceled THEN
				IF ctx -> 'input' ? 'give_up' THEN
					RETURN '{"cancelled_by": "postgres"}';
				END IF;
			END;
		END LOOP;
	END $$;
	GRANT EXECUTE ON FUNCTION public.stubborn(jsonb) TO regress_conf;
	SELECT smartconnector.create_connector('Stubborn', 'stubborn', handler => 'public.stubborn(jsonb)',
		status => 'operational');
	SELECT smartconnector.create_connector('Stubborn with timeout', 'stubborn_timeout',
		handler => 'public.stubborn(jsonb)', run_as => 'regress_conf', status => 'operational');
});
my $stubborn = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('stubborn')});
wait_until($node, "SELECT count(*) = 1 FROM smartconnector.execution_progress WHERE execution_id = $stubborn",
	'a handler that ignores cancels runs');
$node->safe_psql('postgres', "SELECT smartconnector.cancel($stubborn)");
wait_until($node, "SELECT state = 'cancelled' FROM smartconnector.execution WHERE id = $stubborn",
	'cancel() ends it all the same: its executor is terminated after cancel_grace');
my $timeout = run_and_wait($node, 'stubborn_timeout');
is(execution_field($node, $timeout, "state || ': ' || error"),
	'failed: canceling statement due to statement timeout: the handler did not stop, and its executor was terminated',
	'so does the role\'s statement_timeout');
# --- nor can code the handler leaves for its commit (second attack review) ---
as_low(q{
	CREATE TABLE low.late (x integer);
	CREATE FUNCTION low.sleeper() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		LOOP
			BEGIN
				PERFORM pg_sleep(0.2);
			EXCEPTION WHEN query_canceled THEN NULL;
			END;
		END LOOP;
	END $$;
	CREATE CONSTRAINT TRIGGER late AFTER INSERT ON low.late DEFERRABLE INITIALLY DEFERRED
		FOR EACH ROW EXECUTE FUNCTION low.sleeper();
	CREATE FUNCTION low.at_commit(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO low.late VALUES (1);
	END $$;
});
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.cursor_at_commit(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		EXECUTE 'DECLARE slow_cursor CURSOR WITH HOLD FOR SELECT pg_sleep(3600)';
	END $$;
	GRANT EXECUTE ON FUNCTION public.cursor_at_commit(jsonb) TO regress_conf;
	SELECT smartconnector.create_connector('At commit', 'at_commit', handler => 'low.at_commit(jsonb)',
		run_as => 'regress_low', status => 'operational');
	SELECT smartconnector.create_connector('At commit, with a timeout', 'at_commit_timeout',
		handler => 'public.cursor_at_commit(jsonb)', run_as => 'regress_conf', status => 'operational');
});
my $late = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('at_commit')});
wait_until($node, "SELECT count(*) = 1 FROM pg_stat_activity a JOIN smartconnector.execution_progress p
	ON p.pid = a.pid WHERE p.execution_id = $late AND a.wait_event = 'PgSleep'",
	'a deferred trigger of the handler runs at commit');
# cancel() interrupts that commit rather than wait for it: it returns (true,
# or false if the launcher ended the execution first, as cancelled)
$node->safe_psql('postgres', "SELECT smartconnector.cancel($late)");
wait_until($node, "SELECT state = 'cancelled' FROM smartconnector.execution WHERE id = $late",
	'cancel() returns, and the execution ends cancelled');
is(execution_field($node, $late, "metadata ->> 'stopped'"),
	'the handler did not stop when it was cancelled: its executor was terminated',
	'saying its executor was terminated');
my $cursor = run_and_wait($node, 'at_commit_timeout');
like(execution_field($node, $cursor, "state || ': ' || error"), qr/^failed: canceling statement due to statement timeout/,
	'a held cursor run at commit is bound by the role\'s statement_timeout');

my $gives_up = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('stubborn', '{"give_up": true}')});
wait_until($node, "SELECT count(*) = 1 FROM smartconnector.execution_progress WHERE execution_id = $gives_up",
	'a handler that returns when cancelled runs');
$node->safe_psql('postgres', "CREATE ROLE regress_canceller IN ROLE smartconnector_operator;
	SET ROLE regress_canceller; SELECT smartconnector.cancel($gives_up)");
wait_until($node, "SELECT state = 'cancelled' FROM smartconnector.execution WHERE id = $gives_up", 'it is cancelled');
is(execution_field($node, $gives_up, "metadata ->> 'cancelled_by'"), 'regress_canceller',
	'and its result cannot change who cancelled it');

# --- a handler cannot end its own execution with finish(): that is an external runner's ---
# (before: the execution ended failed with committed NULL while the handler's write committed)
$node->safe_psql('postgres', 'GRANT smartconnector_operator TO regress_low');
as_low(q{
	CREATE FUNCTION low.self_finish(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.orders_archive VALUES (7, 'self-finished');
		PERFORM smartconnector.finish((ctx ->> 'execution_id')::bigint, 'i failed, honest');
	END $$;
});
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('Self finish', 'self_finish', handler => 'low.self_finish(jsonb)',
		run_as => 'regress_low', status => 'operational')});
my $self = run_and_wait($node, 'self_finish');
is(execution_field($node, $self, "state || ' ' || committed || ': ' || error"),
	'failed false: execution ' . $self . ' is run by its handler',
	'a handler calling finish() fails with the refusal, and the executor records the outcome');
is($node->safe_psql('postgres', q{SELECT count(*) FROM public.orders_archive WHERE note = 'self-finished'}), '0',
	'and its write is rolled back');
$node->safe_psql('postgres', 'REVOKE smartconnector_operator FROM regress_low');

done_testing();
