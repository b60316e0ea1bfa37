/*-------------------------------------------------------------------------
 *
 * payload.c
 *		What a completion looks like on the wire: Standard Webhooks
 *		signatures and RFC 5322 email messages.
 *
 * Signatures use PostgreSQL's HMAC (common/hmac.h, backed by OpenSSL) and
 * base64 (common/base64.h); nothing here is hand-written crypto.  The
 * HMAC API needs a resource owner, so these run inside a transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "common/base64.h"
#include "common/hmac.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"

#include "smartconnector.h"

static void append_base64_lines(StringInfo out, const char *data, int len);
static void append_encoded_header(StringInfo out, const char *name, const char *value);

/*
 * The webhook-signature header value for a message, per Standard Webhooks:
 * "v1," + base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")), where key is
 * the base64-decoded part of the secret after "whsec_".  Returns NULL if the
 * secret cannot be decoded (the settings trigger makes that impossible).
 */
char *
sc_webhook_signature(const char *secret, const char *msg_id, int64 timestamp,
					 const char *body)
{
	const char *b64 = secret + 6;	/* after "whsec_" */
	int			b64_len = strlen(b64);
	int			key_max = pg_b64_dec_len(b64_len);
	uint8	   *key = palloc(key_max + 1);
	int			key_len;
	uint8		mac[32];
	char		ts[32];
	pg_hmac_ctx *ctx;
	int			sig_len;
	char	   *out;

	if (strncmp(secret, "whsec_", 6) != 0)
		return NULL;
	key_len = pg_b64_decode(b64, b64_len, (char *) key, key_max);
	if (key_len <= 0)
		return NULL;
	snprintf(ts, sizeof(ts), INT64_FORMAT, timestamp);

	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL ||
		pg_hmac_init(ctx, key, key_len) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) msg_id, strlen(msg_id)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) ".", 1) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) ts, strlen(ts)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) ".", 1) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) body, strlen(body)) < 0 ||
		pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
		elog(ERROR, "could not compute the webhook signature: %s",
			 ctx ? pg_hmac_error(ctx) : "out of memory");
	pg_hmac_free(ctx);
	explicit_bzero(key, key_max + 1);
	pfree(key);

	out = palloc(3 + pg_b64_enc_len(sizeof(mac)) + 1);
	memcpy(out, "v1,", 3);
	sig_len = pg_b64_encode((const char *) mac, sizeof(mac), out + 3,
							pg_b64_enc_len(sizeof(mac)));
	out[3 + sig_len] = '\0';
	return out;
}

/*
 * base64 in lines of 76 characters, CRLF-terminated (RFC 2045).
 */
static void
append_base64_lines(StringInfo out, const char *data, int len)
{
	/* 57 input bytes make one 76-character line */
	for (int pos = 0; pos < len; pos += 57)
	{
		int			chunk = Min(57, len - pos);
		char		line[80];
		int			n = pg_b64_encode(data + pos, chunk, line, sizeof(line));

		appendBinaryStringInfo(out, line, n);
		appendStringInfoString(out, "\r\n");
	}
}

/*
 * "Name: value" with value as RFC 2047 encoded words when it is not plain
 * printable ASCII; each encoded word holds at most 45 bytes of whole
 * characters, so no line exceeds 78 characters.
 */
static void
append_encoded_header(StringInfo out, const char *name, const char *value)
{
	bool		plain = true;
	int			len = strlen(value);

	for (const char *p = value; *p; p++)
	{
		if ((unsigned char) *p < 0x20 || (unsigned char) *p > 0x7e)
			plain = false;
	}
	if (plain && len + strlen(name) + 2 <= 78)
	{
		appendStringInfo(out, "%s: %s\r\n", name, value);
		return;
	}

	appendStringInfo(out, "%s:", name);
	for (int pos = 0; pos < len;)
	{
		int			chunk = 0;
		char		word[80];
		int			n;

		while (pos + chunk < len)
		{
			int			clen = pg_encoding_mblen(PG_UTF8, value + pos + chunk);

			if (chunk + clen > 45)
				break;
			chunk += clen;
		}
		if (chunk == 0)
			chunk = Min(len - pos, 45);
		n = pg_b64_encode(value + pos, chunk, word, sizeof(word));
		appendStringInfo(out, " =?UTF-8?B?%.*s?=", n, word);
		pos += chunk;
		if (pos < len)
			appendStringInfoString(out, "\r\n");
	}
	appendStringInfoString(out, "\r\n");
}

/*
 * A complete RFC 5322 message: Date, From, To, encoded Subject, Message-ID
 * (from the delivery's webhook id, the same on every attempt), MIME headers,
 * and the UTF-8 body in base64.  Control characters in the addresses were
 * refused by the settings validators, so no header can be injected.
 */
char *
sc_email_message(const char *from, const char *to, const char *subject,
				 const char *body, const char *msg_id, int64 execution_id)
{
	StringInfoData m;
	char		date[64];
	time_t		now = time(NULL);
	struct tm	tm;

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);

	initStringInfo(&m);
	appendStringInfo(&m, "Date: %s\r\n", date);
	appendStringInfo(&m, "From: %s\r\n", from);
	appendStringInfo(&m, "To: %s\r\n", to);
	append_encoded_header(&m, "Subject", subject);
	appendStringInfo(&m, "Message-ID: <%s@smartconnector>\r\n", msg_id);
	appendStringInfo(&m, "X-Smartconnector-Execution: " INT64_FORMAT "\r\n", execution_id);
	appendStringInfoString(&m, "MIME-Version: 1.0\r\n");
	appendStringInfoString(&m, "Content-Type: text/plain; charset=UTF-8\r\n");
	appendStringInfoString(&m, "Content-Transfer-Encoding: base64\r\n");
	appendStringInfoString(&m, "\r\n");
	append_base64_lines(&m, body, strlen(body));
	return m.data;
}
