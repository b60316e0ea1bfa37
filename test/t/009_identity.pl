# Every privilege decision and audit record of smartconnector uses the role
# whose code is running, which that code cannot borrow: not the executor's
# or a superuser's session, also inside handlers, security-restricted
# operations (ANALYZE of an expression index) and autovacuum.  Attacks from
# issue 10 that made a non-superuser superuser, or wrote as someone else:
#  - a handler of an admin changed its own connector's run_as to postgres;
#  - a handler of a role without admin rights set another role's email;
#  - executions a handler triggered, and settings it changed, were recorded
#    as the executor's superuser;
#  - an index expression run by a superuser's ANALYZE, or by autovacuum, did
#    the same, and a user-settable setting switched the audit off.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until run_and_wait execution_field);

my $node = new_node('identity', conf => "autovacuum_naptime = 1\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_mallory LOGIN IN ROLE smartconnector_admin;
	CREATE ROLE regress_low LOGIN;
	CREATE ROLE regress_victim LOGIN;
	CREATE SCHEMA mal AUTHORIZATION regress_mallory;
	CREATE SCHEMA low AUTHORIZATION regress_low;
	SELECT smartconnector.create_connector('Ext', 'ext', status => 'operational');
});

sub as_role
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', "SET ROLE $role; $sql");
}



sub is_superuser
{
	my ($role) = @_;
	return $node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = '$role'");
}

my $settings = q{SELECT run_as || ' ' || handler FROM smartconnector.connector WHERE api_name = };

# --- a handler cannot give its connector a run_as its author may not use ---
as_role('regress_mallory', q{
	CREATE FUNCTION mal.step2(ctx jsonb) RETURNS void LANGUAGE sql AS $$
		ALTER ROLE regress_mallory SUPERUSER
	$$;
	CREATE FUNCTION mal.step1(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		UPDATE smartconnector.connector SET run_as = 'postgres', handler = 'mal.step2(jsonb)'
		 WHERE api_name = 'mal_job';
	END $$;
	SELECT smartconnector.create_connector('Mal', 'mal_job', handler => 'mal.step1(jsonb)',
		status => 'operational');
});
my ($ret, $out, $err) = $node->psql('postgres', q{SET ROLE regress_mallory;
	UPDATE smartconnector.connector SET run_as = 'postgres' WHERE api_name = 'mal_job'});
like($err, qr/permission denied to run connector handlers as role "postgres"/,
	'typed by the admin, the change is refused');
my $step1 = run_and_wait($node, 'mal_job');
is(execution_field($node, $step1, 'state'), 'failed', 'from her handler, it is refused too');
is(execution_field($node, $step1, "metadata -> 'error' ->> 'sqlstate'"), '42501', 'with insufficient_privilege');
like(execution_field($node, $step1, 'error'), qr/permission denied to run connector handlers as role "postgres"/,
	'and the same message');
is($node->safe_psql('postgres', $settings . q{'mal_job'}), 'regress_mallory mal.step1(jsonb)',
	'run_as and handler are unchanged');
run_and_wait($node, 'mal_job');
is(is_superuser('regress_mallory'), 'f', 'the admin did not become superuser');

# --- what a handler triggers and changes is recorded as its run_as ---
as_role('regress_mallory', q{
	CREATE FUNCTION mal.note(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	BEGIN
		UPDATE smartconnector.connector SET description = 'noted by the handler'
		 WHERE api_name = 'mal_note';
		RETURN jsonb_build_object('triggered', smartconnector.trigger('ext'));
	END $$;
	SELECT smartconnector.create_connector('Note', 'mal_note', handler => 'mal.note(jsonb)',
		status => 'operational');
});
my $note = run_and_wait($node, 'mal_note');
is(execution_field($node, $note, 'state'), 'success', 'the handler triggers and changes settings');
my $triggered = execution_field($node, $note, "metadata ->> 'triggered'");
is(execution_field($node, $triggered, 'initiated_by'), 'regress_mallory',
	'an execution a handler triggered is initiated by its run_as');
is($node->safe_psql('postgres', q{SELECT string_agg(changed_by, ',') FROM smartconnector.settings_history
	WHERE api_name = 'mal_note' AND column_name = 'description'}), 'regress_mallory',
	'a settings change by a handler is audited as its run_as');

# --- a handler without admin rights cannot set another role's email ---
as_role('regress_low', q{
	CREATE FUNCTION low.mail(ctx jsonb) RETURNS void LANGUAGE sql AS $$
		SELECT smartconnector.set_user_email('attacker@example.com', 'postgres')
	$$;
});
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('Mail', 'low_mail', handler => 'low.mail(jsonb)',
		run_as => 'regress_low', status => 'operational')});
my $mail = run_and_wait($node, 'low_mail');
is(execution_field($node, $mail, "state || ' ' || error"), 'failed permission denied to set the email of role "postgres"',
	'set_user_email for another role is refused in a handler');
is($node->safe_psql('postgres', q{SELECT count(*) FROM smartconnector.user_email WHERE role_name = 'postgres'}),
	'0', 'no address was set');

# --- an index expression run by a superuser's ANALYZE borrows nothing ---
as_role('regress_mallory', q{
	SELECT smartconnector.create_connector('Idx', 'mal_idx', handler => 'mal.step1(jsonb)',
		status => 'operational');
	CREATE TABLE mal.log (at timestamptz DEFAULT clock_timestamp(), who text, what text);
	CREATE TABLE mal.phase (p text);
	INSERT INTO mal.phase VALUES ('setup');
	CREATE FUNCTION mal.attack() RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM set_config('check_function_bodies', 'off', true);
		BEGIN
			UPDATE smartconnector.connector SET run_as = 'postgres', handler = 'mal.step2(jsonb)'
			 WHERE api_name = 'mal_idx';
			INSERT INTO mal.log (who, what) VALUES (session_user, 'run_as accepted');
		EXCEPTION WHEN insufficient_privilege THEN
			INSERT INTO mal.log (who, what) VALUES (session_user, SQLERRM);
		END;
		UPDATE smartconnector.connector SET description = 'phase ' || (SELECT p FROM mal.phase)
		 WHERE api_name = 'mal_idx';
	END $$;
	CREATE FUNCTION mal.f(x integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
	BEGIN
		PERFORM mal.attack();
		RETURN x;
	END $$;
	CREATE TABLE mal.t (x integer);
	CREATE INDEX ON mal.t (mal.f(x));
	INSERT INTO mal.t VALUES (1);
	UPDATE mal.phase SET p = 'analyze';
});
$node->safe_psql('postgres', 'ANALYZE mal.t');
is($node->safe_psql('postgres', q{SELECT who || ': ' || what FROM mal.log ORDER BY at DESC LIMIT 1}),
	'postgres: permission denied to run connector handlers as role "postgres"',
	'in a superuser\'s ANALYZE, the admin\'s index expression is refused');
is($node->safe_psql('postgres', $settings . q{'mal_idx'}), 'regress_mallory mal.step1(jsonb)',
	'run_as and handler are unchanged');
is($node->safe_psql('postgres', q{SELECT string_agg(changed_by, ',') FROM smartconnector.settings_history
	WHERE api_name = 'mal_idx' AND new_value = 'phase analyze'}), 'regress_mallory',
	'the change it may make is audited, as the admin, though it turned check_function_bodies off');

# --- a role without any smartconnector membership, through ANALYZE and autovacuum ---
as_role('regress_low', q{
	CREATE TABLE low.phase (p text);
	INSERT INTO low.phase VALUES ('setup');
	CREATE TABLE low.log (phase text, who text, what text);
	CREATE FUNCTION low.attack(victim name) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM smartconnector.set_user_email('attacker@example.com', victim);
		INSERT INTO low.log SELECT p, session_user, 'accepted' FROM low.phase;
	EXCEPTION WHEN insufficient_privilege THEN
		INSERT INTO low.log SELECT p, session_user, SQLERRM FROM low.phase;
	END $$;
	CREATE FUNCTION low.f(x integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
	BEGIN
		PERFORM low.attack(CASE WHEN x = 1 THEN 'regress_victim' ELSE 'postgres' END);
		RETURN x;
	END $$;
	CREATE TABLE low.t (x integer);
	CREATE INDEX ON low.t (low.f(x));
	INSERT INTO low.t VALUES (1);
	CREATE TABLE low.auto (x integer) WITH (autovacuum_analyze_threshold = 0,
		autovacuum_analyze_scale_factor = 0);
	CREATE INDEX ON low.auto (low.f(x));
	UPDATE low.phase SET p = 'manual';
});
$node->safe_psql('postgres', 'ANALYZE low.t');
is($node->safe_psql('postgres', q{SELECT string_agg(what, ', ') FROM low.log WHERE phase = 'manual' AND who = 'postgres'}),
	'permission denied to set the email of role "regress_victim"',
	'in a superuser\'s ANALYZE, set_user_email for another role is refused');
as_role('regress_low', q{BEGIN;
	INSERT INTO low.auto SELECT 2 FROM generate_series(1, 10);
	UPDATE low.phase SET p = 'auto';
	COMMIT});
wait_until($node, q{SELECT count(*) > 0 FROM low.log WHERE phase = 'auto' AND who = 'postgres'},
	'autovacuum analyzes the table and runs the expression');
wait_until($node, q{SELECT autoanalyze_count > 0 FROM pg_stat_user_tables WHERE relid = 'low.auto'::regclass},
	'it was autovacuum');
is($node->safe_psql('postgres', q{SELECT DISTINCT what FROM low.log WHERE phase = 'auto' AND who = 'postgres'}),
	'permission denied to set the email of role "postgres"', 'in autovacuum it is refused too');
is($node->safe_psql('postgres', q{SELECT count(*) FROM smartconnector.user_email}), '0',
	'nobody\'s address was set');
# --- the launcher's statements cannot be hijacked through the search path ---
# (found by an attack review: a role that can create in public made an "="
# on our enum types, which the launcher's queries then ran as superuser).
# This test's own sessions keep public out of their search_path, or the
# superuser's queries below would run the operator themselves.
$ENV{PGOPTIONS} = '-c search_path=pg_catalog';
$node->safe_psql('postgres', q{
	SELECT count(smartconnector.cancel(id)) FROM smartconnector.execution WHERE state::text = 'queued';
	GRANT CREATE ON SCHEMA public TO PUBLIC;
	CREATE ROLE regress_eve LOGIN;
	CREATE FUNCTION public.noop(ctx jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	SELECT smartconnector.create_connector('Noop', 'noop', handler => 'public.noop(jsonb)',
		status => 'operational');
});
as_role('regress_eve', q{
	CREATE FUNCTION public.st_eq(a smartconnector.connector_status, b smartconnector.connector_status)
	RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_eve') THEN
			EXECUTE 'ALTER ROLE regress_eve SUPERUSER';
		END IF;
		RETURN a::text = b::text;
	END $$;
	CREATE OPERATOR public.= (LEFTARG = smartconnector.connector_status,
		RIGHTARG = smartconnector.connector_status, FUNCTION = public.st_eq);
	CREATE FUNCTION public.ex_eq(a smartconnector.execution_state, b smartconnector.execution_state)
	RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_eve') THEN
			EXECUTE 'ALTER ROLE regress_eve SUPERUSER';
		END IF;
		RETURN a::text = b::text;
	END $$;
	CREATE OPERATOR public.= (LEFTARG = smartconnector.execution_state,
		RIGHTARG = smartconnector.execution_state, FUNCTION = public.ex_eq);
});
my $noop = run_and_wait($node, 'noop');
is(execution_field($node, $noop, 'state'), 'success', 'executions run with the planted operators around');
# a launcher pass that runs every one of its statements: a dead external runner
my $runner = $node->background_psql('postgres');
my $ext = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
is($runner->query_safe(q{SELECT smartconnector.claim('ext')}), $ext, 'an external runner claims');
wait_until($node, "SELECT count(*) = 1 FROM smartconnector.execution_progress WHERE execution_id = $ext",
	'and runs it');
my $runner_pid = $runner->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($runner_pid)");
$runner->{run}->kill_kill;
wait_until($node, "SELECT state::text = 'failed' FROM smartconnector.execution WHERE id = $ext",
	'the launcher has done a pass');
is(is_superuser('regress_eve'), 'f', 'the launcher did not run the planted operators');
$node->safe_psql('postgres', q{DROP OPERATOR public.= (smartconnector.connector_status, smartconnector.connector_status);
	DROP OPERATOR public.= (smartconnector.execution_state, smartconnector.execution_state);
	REVOKE CREATE ON SCHEMA public FROM PUBLIC});
delete $ENV{PGOPTIONS};

# --- only cancel() writes cancelled_by; only pg_cron runs trigger_scheduled() ---
$node->safe_psql('postgres', q{
	CREATE ROLE regress_op LOGIN IN ROLE smartconnector_operator;
	SELECT smartconnector.set_status('ext', 'operational');
});
$runner = $node->background_psql('postgres');
my $forged = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
$runner->query_safe(q{SELECT smartconnector.claim('ext')});
$runner->query_safe(qq{SELECT smartconnector.finish($forged, metadata => '{"cancelled_by": "regress_mallory", "rows": 3}')});
is(execution_field($node, $forged, "state || ' ' || metadata::text"), 'success {"rows": 3}',
	'a runner cannot write cancelled_by into an execution nobody cancelled');
my $cancelled = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
$runner->query_safe(q{SELECT smartconnector.claim('ext')});
as_role('regress_op', "SELECT smartconnector.cancel($cancelled)");
$runner->query(qq{SELECT smartconnector.finish($cancelled, metadata => '{"cancelled_by": "postgres"}')});
is(execution_field($node, $cancelled, "state || ' ' || (metadata ->> 'cancelled_by')"), 'cancelled regress_op',
	'nor replace the role that cancelled it');
$runner->{stderr} = '';
$runner->quit;
# a runner cannot switch the audit off either (second attack review)
$node->safe_psql('postgres', q{SELECT smartconnector.set_status('ext', 'operational')});
my $failing = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
$runner = $node->background_psql('postgres');
$runner->query_safe(q{SET ROLE regress_op; SET check_function_bodies = off; SELECT smartconnector.claim('ext')});
$runner->query_safe(qq{SELECT smartconnector.finish($failing, 'the source is down')});
is($node->safe_psql('postgres', q{SELECT changed_by || ' ' || new_value FROM smartconnector.settings_history
	WHERE api_name = 'ext' AND column_name = 'status' ORDER BY id DESC LIMIT 1}), 'postgres need_attention',
	'the need_attention its failure causes is audited, with check_function_bodies off in its session');
$runner->quit;
my $cid = $node->safe_psql('postgres', q{SELECT smartconnector.connector_id('ext')});
($ret, $out, $err) = $node->psql('postgres', "SET ROLE regress_op; SELECT smartconnector.trigger_scheduled($cid)");
like($err, qr/smartconnector.trigger_scheduled\(\) is for pg_cron jobs/,
	'an operator cannot record a trigger as scheduled');

is(is_superuser('regress_mallory') . is_superuser('regress_low') . is_superuser('regress_eve'), 'fff',
	'nobody became superuser');

done_testing();
