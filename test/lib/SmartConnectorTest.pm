# SmartConnectorTest: helpers shared by the TAP tests under test/t/.
#
# new_node() gives a PostgreSQL::Test::Cluster with smartconnector preloaded
# and serving the database "postgres", so each test starts from the same
# server configuration that the README documents.
package SmartConnectorTest;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use Exporter 'import';

our @EXPORT_OK = qw(new_node);

# Create, configure and start a node; extra lines go to postgresql.conf.
sub new_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	my $conf = "shared_preload_libraries = 'smartconnector'\n"
	  . "smartconnector.database_name = 'postgres'\n"
	  . ($opts{conf} // '');
	$node->append_conf('postgresql.conf', $conf);
	$node->start unless $opts{no_start};
	return $node;
}

1;
