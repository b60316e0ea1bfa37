# The README runs as written: every ```sql block, in order, on a fresh
# server (smartconnector and pg_cron preloaded, nothing created yet), with
# psql's ON_ERROR_STOP.  Output is not compared; an error fails the test.
# Then the example's promises are checked: the example handler copied the
# shop's orders into the warehouse, and the external runner's execution
# ended.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until);

my $readme = -e "$ENV{TESTDIR}/README.md" ? slurp_file("$ENV{TESTDIR}/README.md") : slurp_file('README.md');
my @blocks = $readme =~ /^```sql\n(.*?)^```/msg;
cmp_ok(scalar(@blocks), '>=', 8, 'found the sql blocks of README.md (' . scalar(@blocks) . ')');

my $node = new_node('readme', preload => 'smartconnector,pg_cron',
	conf => "cron.database_name = 'postgres'\n");

# one session, as a reader at one psql prompt: later blocks use the \gset variables of earlier ones
my $n = 0;
my $script = join('', map { $n++; "\\echo README sql block $n\n$_" } @blocks);
my ($ret, $out, $err) = $node->psql('postgres', $script, extra_params => [ '-v', 'ON_ERROR_STOP=1' ]);
my ($last) = $out =~ /.*^(README sql block \d+)$/ms;
is($ret, 0, "all $n README sql blocks run without error") or diag("failed in $last:\n$err");

wait_until($node, q{
	SELECT count(*) = 0 FROM smartconnector.execution e
	 WHERE e.connector_id = smartconnector.connector_id('orders_to_warehouse') AND NOT e.dry_run
	   AND e.state IN ('queued', 'running')},
	"the tour's execution of the example handler ends");
is($node->safe_psql('postgres', q{
	SELECT state || ' ' || records_updated FROM smartconnector.execution e
	 WHERE e.connector_id = smartconnector.connector_id('orders_to_warehouse') AND NOT e.dry_run
	 ORDER BY id LIMIT 1}), 'success 5', 'the example handler succeeded and recorded its five orders');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM shop.orders s JOIN warehouse.orders w USING (id, total)}), '5',
	'and copied them into the warehouse');
is($node->safe_psql('postgres', q{
	SELECT string_agg(state::text, ',') FROM smartconnector.execution e
	 WHERE e.connector_id = smartconnector.connector_id('crm_customers')}), 'success',
	"the external runner's claimed execution ended");

done_testing();
