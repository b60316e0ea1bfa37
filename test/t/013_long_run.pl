# What keeps a server healthy for months, not minutes.
#
# The workers report their table statistics, so autovacuum and autoanalyze
# see the writes of executors, launcher and dispatcher and keep the hot
# tables (execution, queue, delivery) from bloating.  Low autovacuum
# thresholds make "vacuumed under a steady load" happen within seconds;
# insert-driven vacuums are off, so only the dead rows that the workers'
# own updates and deletes leave can start one.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until start_receiver);

my $dir = PostgreSQL::Test::Utils::tempdir;
my $http = start_receiver($dir);
my $node = new_node('stats', conf => q{
smartconnector.block_private_addresses = off
autovacuum_naptime = 1s
autovacuum_vacuum_threshold = 50
autovacuum_vacuum_scale_factor = 0
autovacuum_vacuum_insert_threshold = -1
autovacuum_analyze_threshold = 50
autovacuum_analyze_scale_factor = 0
});
$node->safe_psql('postgres', qq{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_etl LOGIN;
	CREATE FUNCTION public.noop(ctx jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	SELECT smartconnector.create_connector('Busy', 'busy', status => 'operational',
		handler => 'public.noop(jsonb)', run_as => 'regress_etl', max_concurrent_executions => 4,
		execution_ended_webhook_url => 'http://127.0.0.1:$http->{port}/ok');
});

# a steady load: batches of executions, each ending with a webhook
my $rounds = 0;
my $vacuumed = q{SELECT count(*) = 3 FROM pg_stat_user_tables
	WHERE schemaname IN ('smartconnector', 'smartconnector_internal') AND relname IN ('execution', 'queue', 'delivery')
	  AND autovacuum_count > 0 AND autoanalyze_count > 0};
until ($node->safe_psql('postgres', $vacuumed) eq 't' || $rounds >= 40)
{
	$node->safe_psql('postgres', q{SELECT count(smartconnector.trigger('busy')) FROM generate_series(1, 50)});
	$node->poll_query_until('postgres', q{
		SELECT count(*) = 0 FROM smartconnector.execution WHERE state IN ('queued', 'running')})
	  or die 'executions did not end';
	$node->poll_query_until('postgres', q{
		SELECT count(*) = 0 FROM smartconnector.delivery WHERE state = 'pending'})
	  or die 'deliveries were not sent';
	$rounds++;
}
my $stats = $node->safe_psql('postgres', q{
	SELECT string_agg(format('%s: upd %s, del %s, autovacuum %s, autoanalyze %s', relname,
							 n_tup_upd, n_tup_del, autovacuum_count, autoanalyze_count), '; ' ORDER BY relname)
	  FROM pg_stat_user_tables
	 WHERE schemaname IN ('smartconnector', 'smartconnector_internal') AND relname IN ('execution', 'queue', 'delivery')});
note("after $rounds rounds of 50: $stats");
is($node->safe_psql('postgres', $vacuumed), 't',
	'autovacuum and autoanalyze processed execution, queue and delivery under load')
  or diag($stats);
is($node->safe_psql('postgres', q{
	SELECT bool_and(n_tup_upd > 0) FROM pg_stat_user_tables
	 WHERE schemaname = 'smartconnector' AND relname IN ('execution', 'delivery')}), 't',
	'the workers\' updates are counted');

# --- no memory growth on failures ---
# One executor runs every execution; its private memory after a warm-up
# and after 1,200 more failing runs must stay within 2 MB (it grew by 8 kB
# a failure when error metadata was built in TopMemoryContext).
$node->safe_psql('postgres', q{
	CREATE ROLE regress_fail LOGIN;
	CREATE FUNCTION public.fail(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM smartconnector.record('r' || i, 'created') FROM generate_series(1, 5) i;
		RAISE EXCEPTION 'failure % of many', ctx ->> 'execution_id'
			USING DETAIL = repeat('detail ', 100), HINT = 'a hint';
	END $$;
	SELECT smartconnector.create_connector('Failing', 'failing', status => 'operational',
		handler => 'public.fail(jsonb)', run_as => 'regress_fail')});

# Run n failing executions and wait for their end; returns the private
# memory (RssAnon, kB) of the executor that ran them.
sub fail_many
{
	my ($n) = @_;
	$node->safe_psql('postgres', "SELECT count(smartconnector.trigger('failing')) FROM generate_series(1, $n)");
	$node->poll_query_until('postgres', q{
		SELECT count(*) = 0 FROM smartconnector.execution WHERE state IN ('queued', 'running')})
	  or die 'failing executions did not end';
	my @pids = split /\n/, $node->safe_psql('postgres',
		q{SELECT pid FROM smartconnector.executors WHERE role = 'regress_fail' AND pid IS NOT NULL});
	die "expected one executor of regress_fail, got @pids" unless @pids == 1;
	my ($kb) = slurp_file("/proc/$pids[0]/status") =~ /^RssAnon:\s+(\d+) kB/m;
	return ($pids[0], $kb);
}
my ($pid0, $warm) = fail_many(300);
my ($pid1, $after) = fail_many(1200);
note("executor $pid0 RssAnon: $warm kB after 300 failures, $after kB after 1,500");
is($pid1, $pid0, 'the same executor ran all of them');
cmp_ok($after - $warm, '<', 2048, 'its private memory grew by less than 2 MB over 1,200 failures');

# --- one huge value cannot stall everyone: an error is bounded ---
$node->safe_psql('postgres', qq{
	SELECT smartconnector.create_connector('Huge', 'huge', status => 'operational',
		execution_ended_webhook_url => 'http://127.0.0.1:$http->{port}/ok/huge');
	SELECT smartconnector.create_connector('Neighbour', 'neighbour', status => 'operational',
		execution_ended_webhook_url => 'http://127.0.0.1:$http->{port}/ok/neighbour')});
my $huge = $node->safe_psql('postgres', q{
	SELECT smartconnector.trigger('huge') AS id \gset
	SELECT smartconnector.claim('huge') = :id;
	SELECT smartconnector.finish(:id, repeat('E', 30000000));
	SELECT :id});
$huge = (split /\n/, $huge)[-1];
my $neighbour = $node->safe_psql('postgres', q{
	SELECT smartconnector.trigger('neighbour') AS id \gset
	SELECT smartconnector.claim('neighbour') = :id;
	SELECT smartconnector.finish(:id);
	SELECT :id});
$neighbour = (split /\n/, $neighbour)[-1];
wait_until($node, "SELECT count(*) = 2 FROM smartconnector.delivery WHERE execution_id IN ($huge, $neighbour) AND state = 'delivered'",
	'the webhook of a 30 MB error and its neighbour\'s are both delivered');
is($node->safe_psql('postgres', "SELECT octet_length(payload ->> 'error') <= 8192 AND payload ->> 'error' LIKE '%[truncated: the error had 30000000 bytes]' FROM smartconnector.delivery WHERE execution_id = $huge"),
	't', 'its payload carries the error cut to 8 kB, saying how big it was');

done_testing();
