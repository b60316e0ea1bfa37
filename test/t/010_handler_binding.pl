# The handler that runs is the one configured, as the role configured, and
# the configuration survives pg_upgrade and pg_dump.  Findings of issue 10:
#  - after ALTER FUNCTION h RENAME TO h_old and a new h, the connector showed
#    h_old but the executor ran the new h;
#  - run_as was checked against whoever set the handler, so the handler's
#    owner could later replace its body and run anything as run_as;
#  - pg_upgrade --check refused a cluster with the extension (a regprocedure
#    column), and a dump whose handler or run_as role had been dropped could
#    not be restored: every connector, execution and delivery was lost.
use strict;
use warnings;
use Cwd;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until run_and_wait execution_field);

my $node = new_node('binding', conf => "smartconnector.webhook_retry_schedule = '1h'\n"
	  . "smartconnector.block_private_addresses = off\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE TABLE public.ran (who text, execution bigint);
	CREATE ROLE regress_author LOGIN;
	CREATE ROLE regress_high LOGIN;
	CREATE SCHEMA author AUTHORIZATION regress_author;
	GRANT INSERT ON public.ran TO regress_high;
});



# --- rename and replace never run other code ---
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.h5(ctx jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO public.ran VALUES ('original', (ctx ->> 'execution_id')::bigint)
	$$;
	SELECT smartconnector.create_connector('H5', 'h5', handler => 'public.h5(jsonb)',
		status => 'operational');
	ALTER FUNCTION public.h5(jsonb) RENAME TO h5_old;
	CREATE FUNCTION public.h5(ctx jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO public.ran VALUES ('impostor', (ctx ->> 'execution_id')::bigint)
	$$;
});
my $renamed = run_and_wait($node, 'h5');
is($node->safe_psql('postgres', q{SELECT count(*) FROM public.ran WHERE who = 'impostor'}), '0',
	'after a rename and a new function of the old name, the new one does not run');
is(execution_field($node, $renamed, 'state'), 'failed', 'the execution fails');
like(execution_field($node, $renamed, "error || ': ' || (metadata -> 'error' ->> 'detail')"),
	qr/connector "h5" cannot execute: The handler public\.h5\(jsonb\) is now named public\.h5_old\(jsonb\)/,
	'saying that the configured handler was renamed');
is($node->safe_psql('postgres', q{SELECT status FROM smartconnector.connector WHERE api_name = 'h5'}),
	'need_attention', 'and the connector needs attention');
$node->safe_psql('postgres', q{UPDATE smartconnector.connector SET handler = 'public.h5_old(jsonb)', status = 'operational'
	WHERE api_name = 'h5'});
my $fixed = run_and_wait($node, 'h5');
is($node->safe_psql('postgres', "SELECT who FROM public.ran WHERE execution = $fixed"), 'original',
	'set again under its new name, the configured function runs');
$node->safe_psql('postgres', q{
	DROP FUNCTION public.h5_old(jsonb);
	CREATE FUNCTION public.h5_old(ctx jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO public.ran VALUES ('impostor', (ctx ->> 'execution_id')::bigint)
	$$;
});
my $replaced = run_and_wait($node, 'h5');
is($node->safe_psql('postgres', q{SELECT count(*) FROM public.ran WHERE who = 'impostor'}), '0',
	'after DROP and CREATE of the same name, the new function does not run');
like(execution_field($node, $replaced, "metadata -> 'error' ->> 'detail'"), qr/no longer exists/,
	'the execution fails: the configured function is gone');

# --- the handler's owner must have the privileges of run_as ---
$node->safe_psql('postgres', q{
	SET ROLE regress_author;
	CREATE FUNCTION author.h6(ctx jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	GRANT EXECUTE ON FUNCTION author.h6(jsonb) TO regress_high;
});
my ($ret, $out, $err) = $node->psql('postgres', q{
	SELECT smartconnector.create_connector('H6', 'h6', handler => 'author.h6(jsonb)',
		run_as => 'regress_high')});
like($err, qr/invalid handler for connector "h6".*DETAIL:  The owner of author\.h6\(jsonb\), role "regress_author", does not have the privileges of role "regress_high"\./s,
	'a handler whose owner lacks the privileges of run_as is refused when it is set');
$node->safe_psql('postgres', q{
	CREATE FUNCTION author.h6b(ctx jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO public.ran VALUES ('h6b', (ctx ->> 'execution_id')::bigint)
	$$;
	GRANT EXECUTE ON FUNCTION author.h6b(jsonb) TO regress_high;
	SELECT smartconnector.create_connector('H6b', 'h6b', handler => 'author.h6b(jsonb)',
		run_as => 'regress_high', status => 'operational');
});
my $h6b = run_and_wait($node, 'h6b');
is(execution_field($node, $h6b, 'state'), 'success', 'a handler owned by a superuser runs as run_as');
$node->safe_psql('postgres', q{
	ALTER FUNCTION author.h6b(jsonb) OWNER TO regress_author;
	SET ROLE regress_author;
	CREATE OR REPLACE FUNCTION author.h6b(ctx jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO public.ran VALUES ('stolen', (ctx ->> 'execution_id')::bigint)
	$$;
});
my $stolen = run_and_wait($node, 'h6b');
is($node->safe_psql('postgres', q{SELECT count(*) FROM public.ran WHERE who = 'stolen'}), '0',
	'once its owner lacks the privileges of run_as, the replaced body does not run');
like(execution_field($node, $stolen, "state || ': ' || (metadata -> 'error' ->> 'detail')"),
	qr/^failed: The owner of author\.h6b\(jsonb\), role "regress_author", does not have the privileges of role "regress_high"\./,
	'the owner is checked before every run');

# --- a dump restores even when a handler or a run_as role was dropped ---
$node->safe_psql('postgres', q{
	CREATE ROLE regress_gone LOGIN;
	CREATE FUNCTION public.alive(ctx jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO public.ran VALUES ('alive', (ctx ->> 'execution_id')::bigint)
	$$;
	CREATE FUNCTION public.doomed(ctx jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	GRANT EXECUTE ON FUNCTION public.alive(jsonb) TO regress_gone;
	SELECT smartconnector.create_connector('Alive', 'alive', handler => 'public.alive(jsonb)',
		status => 'operational', execution_ended_webhook_url => 'http://127.0.0.1:9/hook');
	SELECT smartconnector.create_connector('No function', 'no_function', handler => 'public.doomed(jsonb)',
		status => 'operational');
	SELECT smartconnector.create_connector('No role', 'no_role', handler => 'public.alive(jsonb)',
		run_as => 'regress_gone', status => 'operational');
	SELECT smartconnector.set_max_concurrent_executions('no_role', 0);
});
run_and_wait($node, 'alive');
run_and_wait($node, 'no_function');
$node->safe_psql('postgres', q{
	SELECT smartconnector.trigger('no_role');
	DROP FUNCTION public.doomed(jsonb);
	REVOKE EXECUTE ON FUNCTION public.alive(jsonb) FROM regress_gone;
	DROP ROLE regress_gone;
});
my $counts = q{SELECT (SELECT count(*) FROM smartconnector.connector) || ' connectors, '
	|| (SELECT count(*) FROM smartconnector.execution) || ' executions, '
	|| (SELECT count(*) FROM smartconnector.delivery) || ' deliveries'};
my $before = $node->safe_psql('postgres', $counts);
my $dump = $node->basedir . '/dump.sql';
$node->command_ok([ 'pg_dump', '--no-owner', '--no-privileges', '-f', $dump, '-d', $node->connstr('postgres') ],
	'pg_dump succeeds');
my $copy = new_node('restored');
$copy->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $dump, '-d', $copy->connstr('postgres') ],
	'the dump restores, into a cluster without the dropped function and role');
is($copy->safe_psql('postgres', $counts), $before, 'every connector, execution and delivery is there');
is($copy->safe_psql('postgres', q{SELECT string_agg(api_name || ' ' || handler || ' ' || run_as, ', ' ORDER BY api_name)
	FROM smartconnector.connector WHERE api_name IN ('no_function', 'no_role')}),
	'no_function public.doomed(jsonb) postgres, no_role public.alive(jsonb) regress_gone',
	'the broken connectors keep their settings');
like($copy->safe_psql('postgres', q{SELECT smartconnector.describe('no_role') ->> 'problem'}),
	qr/role "regress_gone" does not exist/, 'and say what is broken');
my $restored = run_and_wait($copy, 'alive');
is(execution_field($copy, $restored, 'state'), 'success', 'a restored connector whose handler exists runs');

# --- pg_upgrade: --check passes, and the same handlers run after the upgrade ---
$node->safe_psql('postgres', q{UPDATE smartconnector.connector SET status = 'inactive' WHERE api_name IN ('h5', 'h6b')});
my $before_upgrade = run_and_wait($node, 'alive');
is($node->safe_psql('postgres', "SELECT who FROM public.ran WHERE execution = $before_upgrade"), 'alive',
	'before the upgrade');
$node->stop;
my $new = new_node('upgraded', no_start => 1);
my $bindir = $node->config_data('--bindir');
my $cwd = getcwd();
chdir $new->basedir;
command_ok(
	[
		'pg_upgrade', '--no-sync', '-d', $node->data_dir, '-D', $new->data_dir,
		'-b', $bindir, '-B', $bindir, '-s', $new->host,
		'-p', $node->port, '-P', $new->port, '--check'
	],
	'pg_upgrade --check passes with the extension installed');
command_ok(
	[
		'pg_upgrade', '--no-sync', '-d', $node->data_dir, '-D', $new->data_dir,
		'-b', $bindir, '-B', $bindir, '-s', $new->host,
		'-p', $node->port, '-P', $new->port
	],
	'pg_upgrade succeeds');
chdir $cwd;
$new->start;
my $after_upgrade = run_and_wait($new, 'alive');
is(execution_field($new, $after_upgrade, 'state'), 'success', 'after the upgrade the connector runs');
is($new->safe_psql('postgres', "SELECT who FROM public.ran WHERE execution = $after_upgrade"), 'alive',
	'its own handler');
is($new->safe_psql('postgres', q{SELECT handler_oid = 'public.alive(jsonb)'::regprocedure
	FROM smartconnector.connector WHERE api_name = 'alive'}), 't',
	'bound to the routine\'s new OID');

done_testing();
