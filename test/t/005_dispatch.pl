# Completion dispatch against a real HTTP receiver and a real SMTP server on
# 127.0.0.1: payload and Standard Webhooks signature (checked with Perl's own
# HMAC), emails to the right addresses only, retries with a stable webhook-id,
# Retry-After, redirects not followed, a slow receiver not delaying a fast
# one, response size cap, redeliver, and private address blocking.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(decode_base64 encode_base64);
use Encode qw(encode_utf8 decode);
use JSON::PP;
use SmartConnectorTest qw(new_node wait_until start_receiver start_smtp read_jsonl);

my $dir = PostgreSQL::Test::Utils::tempdir;
my $http = start_receiver($dir);
my $smtp = start_smtp($dir);
my $base = "http://127.0.0.1:$http->{port}";
my $secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my $json = JSON::PP->new->canonical;

my $node = new_node('dispatch', conf => qq{
smartconnector.block_private_addresses = off
smartconnector.webhook_retry_schedule = '1s,1s,1s'
smartconnector.webhook_timeout = '8s'
smartconnector.smtp_url = 'smtp://127.0.0.1:$smtp->{port}'
smartconnector.smtp_from = 'etl\@example.com'
});
$node->safe_psql('postgres', qq{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_runner LOGIN IN ROLE smartconnector_operator;
	INSERT INTO smartconnector.user_email VALUES ('regress_runner', 'runner\@example.com');
	SELECT smartconnector.create_connector('Hooked', 'hooked', status => 'operational',
		execution_ended_webhook_url => '$base/ok',
		webhook_secret => '$secret',
		webhook_headers => '{"X-Api-Key": "k-123"}',
		notification_email => 'ops\@example.com',
		error_notification_email => 'oncall\@example.com');
});

# Make a connector without email that posts to a path of the receiver.
sub hook_connector
{
	my ($api, $path) = @_;
	$node->safe_psql('postgres', qq{
		SELECT smartconnector.create_connector('$api', '$api', status => 'operational',
			execution_ended_webhook_url => '$path')});
}

# Run one execution of $api as regress_runner (an external runner); returns its id.
sub complete
{
	my ($api, %opt) = @_;
	my $finish = defined $opt{error} ? ", '$opt{error}'" : '';
	my $records = join "\n", map { "SELECT smartconnector.record('r$_', '$opt{action}');" } 1 .. ($opt{records} // 0);
	my $out = $node->safe_psql('postgres', qq{
		SET ROLE regress_runner;
		SELECT smartconnector.trigger('$api') AS id \\gset
		SELECT smartconnector.claim('$api') = :id;
		$records
		SELECT smartconnector.finish(:id$finish);
		SELECT :id;});
	return (split /\n/, $out)[-1];
}

sub delivery
{
	my ($id, $cols, $channel) = @_;
	$channel //= 'webhook';
	return $node->safe_psql('postgres',
		"SELECT $cols FROM smartconnector.delivery WHERE execution_id = $id AND channel = '$channel'");
}

sub requests_with_id
{
	my ($msg_id) = @_;
	return grep { $_->{headers}{'webhook-id'} eq $msg_id } read_jsonl($http->{log});
}

sub signature_ok
{
	my ($req) = @_;
	my $h = $req->{headers};
	my $signed = "$h->{'webhook-id'}.$h->{'webhook-timestamp'}." . encode_utf8($req->{body});
	my $expected = 'v1,' . encode_base64(hmac_sha256($signed, decode_base64(substr($secret, 6))), '');
	return $h->{'webhook-signature'} eq $expected;
}

sub mails_for
{
	my ($id) = @_;
	return grep { $_->{data} =~ /^X-Smartconnector-Execution: $id\r?$/m } read_jsonl($smtp->{log});
}

is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'smartconnector dispatcher'"),
	'1', 'the dispatcher shows in pg_stat_activity');

# --- a successful execution: webhook and emails ---
my $ok = complete('hooked', records => 2, action => 'created');
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.delivery WHERE execution_id = $ok AND state = 'delivered'",
	'the webhook and both emails are delivered');
my $msg_id = delivery($ok, 'webhook_id');
my @reqs = requests_with_id($msg_id);
is(scalar @reqs, 1, 'the receiver got one POST');
my $req = $reqs[0];
is($req->{method}, 'POST', 'it is a POST');
is($json->encode($json->decode(encode_utf8($req->{body}))),
	$json->encode($json->decode($node->safe_psql('postgres', "SELECT smartconnector.execution_metadata($ok)"))),
	'the body is exactly execution_metadata()');
my $event = $json->decode(encode_utf8($req->{body}));
is($event->{type}, 'execution.ended', 'type');
is($event->{status}, 'success', 'status');
is($event->{initiated_by}, 'regress_runner', 'initiated_by is the role that triggered');
is($event->{record_counts}{created}, 2, 'record counts');
is($event->{connector}{api_name}, 'hooked', 'connector');
like($event->{started_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$/, 'ISO 8601 timestamps with offset');
is($req->{headers}{'content-type'}, 'application/json', 'Content-Type');
like($req->{headers}{'user-agent'}, qr{^smartconnector/}, 'User-Agent');
is($req->{headers}{'x-api-key'}, 'k-123', 'the connector\'s extra header is sent');
ok(abs($req->{headers}{'webhook-timestamp'} - time) < 120, 'webhook-timestamp is now');
ok(signature_ok($req), 'webhook-signature verifies with an independent HMAC-SHA256');
is(delivery($ok, 'last_status || \' \' || attempts || \' \' || (latency_ms >= 0)'), '200 1 true',
	'status, attempts and latency are recorded');

my @mails = mails_for($ok);
is(join(',', sort map { @{ $_->{rcpt_tos} } } @mails), 'ops@example.com,runner@example.com',
	'success mails go to notification_email and the initiator only');
my ($mail) = grep { $_->{rcpt_tos}[0] eq 'ops@example.com' } @mails;
my ($subject) = $mail->{data} =~ /^Subject: (.*?)\r?\n(?!\s)/ms;
like(decode('MIME-Header', $subject), qr/Hooked: execution $ok success/, 'the subject names connector, execution and status');
like($mail->{data}, qr/^Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r?$/m, 'Date header');
like($mail->{data}, qr/^From: etl\@example.com\r?$/m, 'From is smtp_from');
my $mail_id = $node->safe_psql('postgres',
	"SELECT webhook_id FROM smartconnector.delivery WHERE execution_id = $ok AND target = 'ops\@example.com'");
like($mail->{data}, qr/^Message-ID: <\Q$mail_id\E\@smartconnector>\r?$/m, 'Message-ID is the delivery\'s stable id');
my ($b64) = $mail->{data} =~ /\r?\n\r?\n(.*)$/s;
like(decode_base64($b64), qr/Records:\s+2 created/, 'the body summarises the counts');

# --- failure and partial success also mail error_notification_email ---
my $failed = complete('hooked', error => 'source unreachable');
wait_until($node, "SELECT count(*) = 4 FROM smartconnector.delivery WHERE execution_id = $failed AND state = 'delivered'",
	'failure: webhook and three emails delivered');
is(join(',', sort map { @{ $_->{rcpt_tos} } } mails_for($failed)),
	'oncall@example.com,ops@example.com,runner@example.com', 'failure mails add error_notification_email');
my ($fail_req) = requests_with_id(delivery($failed, 'webhook_id'));
my $fail_event = $json->decode(encode_utf8($fail_req->{body}));
is("$fail_event->{status}: $fail_event->{error}", 'failed: source unreachable', 'the failure is in the payload');
$node->safe_psql('postgres', "SELECT smartconnector.set_status('hooked', 'operational')");
my $partial = complete('hooked', records => 1, action => 'failed');
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.delivery WHERE execution_id = $partial AND channel = 'email' AND state = 'delivered'",
	'partial_success: three emails');

# --- retries keep the webhook-id; each attempt is signed anew ---
hook_connector('flaky', "$base/fail/2/flaky");
my $flaky = complete('flaky');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $flaky AND channel = 'webhook'",
	'a webhook failing twice is delivered on the third attempt');
is(delivery($flaky, 'attempts'), '3', 'three attempts recorded');
my @tries = requests_with_id(delivery($flaky, 'webhook_id'));
is(scalar @tries, 3, 'the receiver saw three requests with the same webhook-id');

# --- Retry-After longer than the schedule is honoured ---
hook_connector('throttled', "$base/retry-after/3/throttled");
my $throttled = complete('throttled');
wait_until($node, "SELECT attempts = 1 FROM smartconnector.delivery WHERE execution_id = $throttled AND channel = 'webhook'",
	'first attempt answered 503 with Retry-After: 3');
ok(delivery($throttled, "extract(epoch FROM next_attempt_at - last_attempt_at)") >= 3,
	'the next attempt waits for Retry-After, not the 1 s of the schedule');

# --- the schedule runs out: failed; redirects are not followed ---
hook_connector('broken', "$base/status/500");
hook_connector('moved', "$base/redirect");
my $broken = complete('broken');
my $moved = complete('moved');
wait_until($node, "SELECT state = 'failed' FROM smartconnector.delivery WHERE execution_id = $broken AND channel = 'webhook'",
	'after the retry schedule the delivery fails');
is(delivery($broken, "attempts || ' ' || last_status || ' ' || last_error"), '4 500 HTTP status 500',
	'one attempt plus three retries, with the last status and error');
is($node->safe_psql('postgres', q{
	SELECT failed_deliveries || ' ' || last_delivery_error FROM smartconnector.overview WHERE api_name = 'broken'}),
	'1 HTTP status 500', 'the overview counts the failed delivery and shows its error');
wait_until($node, "SELECT state = 'failed' FROM smartconnector.delivery WHERE execution_id = $moved AND channel = 'webhook'",
	'a redirect is a failed attempt');
is(delivery($moved, 'last_status'), '302', 'its status is recorded');
is(scalar(grep { $_->{path} eq '/ok' } requests_with_id(delivery($moved, 'webhook_id'))), 0,
	'the redirect was not followed');

# --- a slow receiver does not delay a fast one ---
hook_connector('slow', "$base/slow/4");
hook_connector('fast', "$base/ok");
my $slow = complete('slow');
my $fast = complete('fast');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $fast AND channel = 'webhook'",
	'the fast receiver got its webhook');
is(delivery($slow, 'state'), 'pending', 'while the slow one is still being answered');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $slow AND channel = 'webhook'",
	'the slow one is delivered in its own time');

# --- only the first 4 kB of a response are kept ---
hook_connector('big', "$base/big");
my $big = complete('big');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $big AND channel = 'webhook'",
	'a 1 MB response is accepted');
is(delivery($big, 'length(last_response)'), '4096', 'and stored capped at 4 kB');

# --- redeliver sends the same message again ---
my $delivery_id = delivery($ok, 'id');
$node->safe_psql('postgres', "SELECT smartconnector.redeliver($delivery_id)");
wait_until($node, "SELECT state = 'delivered' AND attempts = 1 FROM smartconnector.delivery WHERE id = $delivery_id",
	'redeliver sends again');
my @again = requests_with_id($msg_id);
is(scalar @again, 2, 'the receiver got it twice, with the same webhook-id');
ok(signature_ok($again[1]), 'the replay is signed anew');

# --- private addresses are refused after name resolution ---
$node->append_conf('postgresql.conf', "smartconnector.block_private_addresses = on\n");
$node->reload;
my $port = $http->{port};
my %private = (
	loopback => "http://127.0.0.1:$port/ok",
	dns_name => "http://localhost:$port/ok",
	v6_loopback => "http://[::1]:$port/ok",
	v4_mapped => "http://[::ffff:127.0.0.1]:$port/ok",
	unspecified => "http://0.0.0.0:$port/ok",
	metadata => "http://169.254.169.254/latest/meta-data/",
	private_10 => "http://10.1.2.3:$port/ok",
	v4_compatible => "http://[::127.0.0.1]:$port/ok",
	v4_translated => "http://[::ffff:0:127.0.0.1]:$port/ok",
	six_to_four => "http://[2002:7f00:1::1]:$port/ok",
	nat64 => "http://[64:ff9b::7f00:1]:$port/ok",
	nat64_metadata => "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
	nat64_local => "http://[64:ff9b:1::a00:1]:$port/ok",
	teredo => "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]:$port/ok");
wait_until($node, "SELECT current_setting('smartconnector.block_private_addresses') = 'on'", 'setting reloaded');
# the dispatcher reloads on its own latch; give it a completion to act on after the reload
for my $name (sort keys %private)
{
	hook_connector("p_$name", $private{$name});
	my $id = complete("p_$name");
	wait_until($node, "SELECT state = 'failed' FROM smartconnector.delivery WHERE execution_id = $id AND channel = 'webhook'",
		"$name: the delivery fails");
	like(delivery($id, "attempts || ' ' || last_error"), qr/^1 refused to connect to private address/,
		"$name: at once, saying why");
	is(scalar(requests_with_id(delivery($id, 'webhook_id'))), 0, "$name: nothing reached the receiver");
}

done_testing();
