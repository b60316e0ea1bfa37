# Schedules with a real pg_cron (fired on their own), renames, direct
# cron.schedule use, schedules going with their connector, the overview
# under load, and the README's daily-operations walk-through run as written.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until start_pgbench finish_pgbench);

my $node = new_node('cron', preload => 'pg_cron,smartconnector', conf => q{
cron.database_name = 'postgres'
cron.use_background_workers = on
});
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg_cron;
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_planner LOGIN IN ROLE smartconnector_admin;
	SET ROLE regress_planner;
	SELECT smartconnector.create_connector('Nightly', 'nightly', status => 'operational', max_concurrent_executions => 0);
});

# --- a schedule fires on its own, also after the api_name changed ---
my $job = $node->safe_psql('postgres', q{SET ROLE regress_planner;
	SELECT smartconnector.schedule('nightly', '* * * * *')});
like($job, qr/^\d+$/, 'schedule() returns the pg_cron job id');
is($node->safe_psql('postgres', q{SELECT schedule || ' ' || active || ' ' || run_as ||
	' ' || (next_run = smartconnector.cron_next('* * * * *', now())) FROM smartconnector.schedules()}),
	'* * * * * true regress_planner true', 'schedules() shows it, run as the scheduling role, with its next run');
is($node->safe_psql('postgres', q{SELECT schedule FROM smartconnector.overview WHERE api_name = 'nightly'}),
	'* * * * *', 'the overview shows the schedule');
my ($ret, $out, $err) = $node->psql('postgres', q{SET ROLE regress_planner;
	SELECT smartconnector.change_api_name('nightly', 'nightly_v2')});
like($err, qr/WARNING:  connector "nightly" has a schedule/, 'renaming warns about the schedule');
# pg_cron directly, naming the connector by (old) api_name
$node->safe_psql('postgres', q{SELECT cron.schedule('direct', '* * * * *',
	$$SELECT smartconnector.trigger('nightly_v2')$$)});
wait_until($node, q{SELECT count(DISTINCT initiated_by) = 2 FROM smartconnector.execution},
	'both schedules fired on their own (within a minute)');
is($node->safe_psql('postgres', q{SELECT trigger_type || ' ' || c.api_name FROM smartconnector.execution e
	JOIN smartconnector.connector c ON c.id = e.connector_id WHERE initiated_by = 'regress_planner' LIMIT 1}),
	'schedule nightly_v2', 'the schedule kept working after the rename: trigger_type schedule, initiated by its role');
is($node->safe_psql('postgres', q{SELECT DISTINCT trigger_type FROM smartconnector.execution WHERE initiated_by <> 'regress_planner'}),
	'schedule', 'a pg_cron job calling trigger() directly is recognised as a schedule too');
$node->safe_psql('postgres', q{SELECT cron.unschedule('direct')});

is($node->safe_psql('postgres', q{SET ROLE regress_planner; SELECT smartconnector.unschedule('nightly_v2')}),
	't', 'unschedule removes it');
is($node->safe_psql('postgres', q{SELECT count(*) FROM smartconnector.schedules()}), '0', 'no schedule left');
is($node->safe_psql('postgres', q{SET ROLE regress_planner; SELECT smartconnector.unschedule('nightly_v2')}),
	'f', 'unschedule without a schedule returns false');

# a schedule goes with its connector
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('Temp', 'temp');
	SELECT smartconnector.schedule('temp', '0 3 * * *');
	DELETE FROM smartconnector.connector WHERE api_name = 'temp';});
is($node->safe_psql('postgres', q{SELECT count(*) FROM cron.job WHERE jobname LIKE 'smartconnector:%'}),
	'0', 'deleting a connector removes its pg_cron job');

# --- pg_cron jobs that only look like ours are neither shown nor touched ---
my $target = $node->safe_psql('postgres', q{
	CREATE ROLE regress_intruder LOGIN;
	GRANT USAGE ON SCHEMA cron TO regress_intruder;
	SELECT smartconnector.create_connector('Target', 'target');
	SELECT id FROM smartconnector.connector WHERE api_name = 'target';});
$node->safe_psql('postgres', qq{
	SET ROLE regress_intruder;
	SELECT cron.schedule('smartconnector:99999999999999999999', '0 0 1 1 *', 'SELECT 1');
	SELECT cron.schedule('smartconnector:$target', '0 0 1 1 *', 'SELECT 2');});
is($node->safe_psql('postgres', q{SELECT count(*) FROM cron.job WHERE username = 'regress_intruder'}), '2',
	'another role made two jobs named like schedules');
($ret, $out, $err) = $node->psql('postgres', q{
	SELECT coalesce(schedule, 'none') FROM smartconnector.overview WHERE api_name = 'target'});
is("$ret $out", '0 none', 'the overview still works, and does not show them as a schedule') or diag($err);
($ret, $out, $err) = $node->psql('postgres', q{SET ROLE regress_planner;
	SELECT smartconnector.change_api_name('target', 'target_v2')});
is($ret, 0, 'change_api_name() still works') or diag($err);
unlike($err, qr/has a schedule/, 'without a warning about a schedule it does not have');
is($node->safe_psql('postgres', q{SET ROLE regress_planner; SELECT smartconnector.unschedule('target_v2')}),
	'f', 'unschedule() finds no schedule');
$node->safe_psql('postgres', q{DELETE FROM smartconnector.connector WHERE api_name = 'target_v2'});
is($node->safe_psql('postgres', q{SELECT count(*) FROM cron.job WHERE username = 'regress_intruder'}), '2',
	'neither unschedule() nor deleting the connector touched the other role\'s jobs');
$node->safe_psql('postgres', q{DELETE FROM cron.job WHERE username = 'regress_intruder'});

# --- the overview stays right under load ---
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('Busy ' || i, 'busy_' || i, status => 'operational',
		max_concurrent_executions => 2) FROM generate_series(1, 3) i;});
my $load = start_pgbench($node, q{
\set n random(1, 3)
SELECT smartconnector.trigger('busy_' || :n);
SELECT coalesce(smartconnector.claim('busy_' || :n), 0) AS id \gset
\if :id > 0
SELECT smartconnector.finish(:id, CASE WHEN random() < 0.2 THEN 'boom' END);
\endif
}, '-c', '3', '-T', '4');
my $consistent = 1;
for (1 .. 25)
{
	# in one snapshot, each overview row must match the executions table
	$consistent &&= $node->safe_psql('postgres', q{
		SELECT bool_and(
			o.queued = (SELECT count(*) FROM smartconnector.execution e
						 WHERE e.connector_id = c.id AND e.state = 'queued')
			AND o.running = (SELECT count(*) FROM smartconnector.execution e
							  WHERE e.connector_id = c.id AND e.state = 'running')
			AND o.failures_24h = (SELECT count(*) FROM smartconnector.execution e
								   WHERE e.connector_id = c.id AND e.state = 'failed')
			AND o.last_execution IS NOT DISTINCT FROM
				(SELECT max(e.id) FROM smartconnector.execution e
				  WHERE e.connector_id = c.id AND e.state NOT IN ('queued', 'running')))
		  FROM smartconnector.overview o JOIN smartconnector.connector c USING (api_name)
		 WHERE o.api_name LIKE 'busy\_%'}) eq 't';
}
finish_pgbench($load, 'three sessions triggered, claimed and finished for 4 s');
ok($consistent, 'every overview read during the load agreed with the executions');
ok($node->safe_psql('postgres', q{SELECT sum(failures_24h) > 0 AND sum(queued) > 0
	FROM smartconnector.overview WHERE api_name LIKE 'busy\_%'}) eq 't', 'and the load left failures and a backlog to count');

# --- history cleanup never blocks admission ---
my $cleaner = $node->background_psql('postgres');
$cleaner->query_safe('BEGIN');
my $deleted = $cleaner->query_safe(q{SELECT smartconnector.cleanup(clock_timestamp())});
ok($deleted > 0, "a cleanup deleted $deleted ended executions and keeps its transaction open");
is($node->safe_psql('postgres', q{
	SET statement_timeout = '5s';
	SELECT smartconnector.trigger('busy_1') AS id \gset
	SELECT smartconnector.claim('busy_1') IS NOT NULL;
	SELECT smartconnector.finish(smartconnector.current_execution()) IS NOT NULL;}),
	"t\nt", 'meanwhile executions are queued, admitted and ended without waiting');
$cleaner->query_safe('COMMIT');
$cleaner->quit;

# --- the README's daily-operations block runs as written ---
my $readme = slurp_file("$ENV{TESTDIR}/README.md") if -e "$ENV{TESTDIR}/README.md";
$readme //= slurp_file('README.md');
my ($block) = $readme =~ /### Daily operations.*?```sql\n(-- Pause without deactivating.*?)```/s;
ok(defined $block && length $block > 100, 'found the walk-through in README.md');
$node->safe_psql('postgres', q{
	SELECT smartconnector.create_connector('Orders', 'orders_sync', status => 'operational',
		execution_ended_webhook_url => 'http://127.0.0.1:9/unreachable');
	SELECT smartconnector.trigger('orders_sync') FROM generate_series(1, 3);
	UPDATE smartconnector.delivery SET state = 'failed', last_attempt_at = now();});
($ret, $out, $err) = $node->psql('postgres', $block, extra_params => [ '-v', 'ON_ERROR_STOP=1' ]);
is($ret, 0, 'the walk-through runs without error') or diag($err);
like($out, qr/^3$/m, 'it cancelled the backlog of three');
like($err, qr/alias of "shop_orders_sync"/, 'the old name kept working after the rename, with a warning');
is($node->safe_psql('postgres', q{SELECT count(*) FROM smartconnector.api_name_alias WHERE alias = 'orders_sync'}), '0',
	'and the alias was dropped at the end');

done_testing();
