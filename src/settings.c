/*-------------------------------------------------------------------------
 *
 * settings.c
 *		SQL-callable helpers behind the connector settings: validators for
 *		email addresses, Standard Webhooks secrets and extra webhook
 *		headers, secret generation, how trigger() was reached, and the hint
 *		a viewer gets for columns it may not read.  (Webhook URLs: url.c.)
 *
 * The validators are called by the BEFORE trigger on
 * smartconnector.connector, so plain INSERT and UPDATE in psql get the same
 * checks as the helper functions.  They raise ERRCODE_INVALID_PARAMETER_VALUE
 * with a detail that says which rule failed; they never echo secrets or
 * header values, which may be credentials.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/sysattr.h"
#include "access/xact.h"
#include "catalog/pg_attribute.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/base64.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/analyze.h"
#include "postmaster/bgworker.h"
#include "utils/guc.h"
#include "nodes/pg_list.h"
#include "port.h"
#include "utils/builtins.h"
#include "utils/acl.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "smartconnector.h"

PG_FUNCTION_INFO_V1(check_email);
PG_FUNCTION_INFO_V1(check_webhook_secret);
PG_FUNCTION_INFO_V1(check_webhook_headers);
PG_FUNCTION_INFO_V1(generate_webhook_secret);
PG_FUNCTION_INFO_V1(caller_trigger_type);

static const char *email_problem(const char *addr);
static bool is_atext(unsigned char c);
static bool is_tchar(unsigned char c);
static bool is_reserved_header(const char *name);

/* Headers the dispatcher sets itself; webhook_headers may not override them */
static const char *const reserved_headers[] = {
	"host", "content-length", "content-type", "transfer-encoding",
	"connection", "keep-alive", "expect", "te", "trailer", "upgrade",
	"user-agent", "content-encoding",
	"webhook-id", "webhook-timestamp", "webhook-signature",
	NULL
};

/*
 * Is c allowed unquoted in the local part of an address (RFC 5322 atext)?
 */
static bool
is_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/*
 * Is c allowed in an HTTP header name (RFC 9110 tchar)?
 */
static bool
is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/*
 * Return why addr is not exactly one plain address, or NULL when it is.
 *
 * Accepted: dot-atom local part, '@', a DNS host name of two or more labels.
 * Refused: lists, display names, quoted local parts, IP literals, control
 * characters (header injection) and non-ASCII (SMTPUTF8 is not assumed).
 */
static const char *
email_problem(const char *addr)
{
	const char *at;
	const char *domain;
	size_t		len = strlen(addr);
	size_t		local_len;
	int			labels = 0;
	bool		last_label_numeric = true;

	if (len > 0 && (addr[0] == ' ' || addr[0] == '\t' ||
					addr[len - 1] == ' ' || addr[len - 1] == '\t'))
		return "The address begins or ends with white space; remove it.";
	for (const char *p = addr; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c < 0x20 || c == 0x7f)
			return "Control characters are not allowed.";
		if (c >= 0x80)
			return "Non-ASCII characters are not allowed; write international domain names in punycode.";
		if (c == ' ' || c == ',' || c == ';' || c == '<' || c == '>' ||
			c == '"' || c == '(' || c == ')')
			return "Exactly one address is allowed, without a display name.";
	}
	if (len == 0)
		return "The address is empty; use NULL for no address.";
	if (len > SC_MAX_EMAIL_LENGTH)
		return psprintf("The address is %zu characters long; at most %d are allowed.",
						len, SC_MAX_EMAIL_LENGTH);

	at = strchr(addr, '@');
	if (at == NULL || strchr(at + 1, '@') != NULL)
		return "An address has the form local-part@domain, with exactly one \"@\".";

	local_len = at - addr;
	if (local_len == 0)
		return "The local part (before \"@\") is empty.";
	if (local_len > SC_MAX_EMAIL_LOCAL_LENGTH)
		return psprintf("The local part (before \"@\") is longer than %d characters.",
						SC_MAX_EMAIL_LOCAL_LENGTH);
	if (addr[0] == '.' || at[-1] == '.')
		return "The local part (before \"@\") may not begin or end with a dot.";
	for (const char *p = addr; p < at; p++)
	{
		if (*p == '.' && p[1] == '.')
			return "The local part (before \"@\") may not contain two dots in a row.";
		if (*p != '.' && !is_atext((unsigned char) *p))
			return psprintf("The local part (before \"@\") may not contain \"%c\".", *p);
	}

	domain = at + 1;
	if (*domain == '\0')
		return "The domain (after \"@\") is empty.";
	for (const char *label = domain; label != NULL;)
	{
		const char *end = strchr(label, '.');
		size_t		label_len = end ? (size_t) (end - label) : strlen(label);

		if (label_len == 0)
			return "The domain (after \"@\") has an empty label.";
		if (label_len > 63)
			return "The domain (after \"@\") has a label longer than 63 characters.";
		if (label[0] == '-' || label[label_len - 1] == '-')
			return "A domain label may not begin or end with a hyphen.";
		last_label_numeric = true;
		for (size_t i = 0; i < label_len; i++)
		{
			unsigned char c = (unsigned char) label[i];

			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
				  (c >= '0' && c <= '9') || c == '-'))
				return psprintf("The domain (after \"@\") may not contain \"%c\".", c);
			if (!(c >= '0' && c <= '9'))
				last_label_numeric = false;
		}
		labels++;
		label = end ? end + 1 : NULL;
	}
	if (labels < 2)
		return "The domain (after \"@\") must be a fully qualified name such as example.com.";
	if (last_label_numeric)
		return "The domain (after \"@\") must be a host name, not an IP address.";
	return NULL;
}

/*
 * check_email(address text, setting text) returns void
 *
 * Raise an error naming the setting unless address is exactly one valid
 * address.  NULL addresses never reach here (the function is STRICT).
 */
Datum
check_email(PG_FUNCTION_ARGS)
{
	char	   *addr = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *setting = text_to_cstring(PG_GETARG_TEXT_PP(1));
	const char *problem = email_problem(addr);

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s: \"%s\"", setting, addr),
				 errdetail_internal("%s", problem)));
	PG_RETURN_VOID();
}

/*
 * check_webhook_secret(secret text) returns void
 *
 * A Standard Webhooks secret is "whsec_" followed by the base64 of 24 to 64
 * random bytes.  The secret itself is never echoed.
 */
Datum
check_webhook_secret(PG_FUNCTION_ARGS)
{
	char	   *secret = text_to_cstring(PG_GETARG_TEXT_PP(0));
	const char *b64;
	int			b64_len;
	int			max_len;
	char	   *decoded;
	int			decoded_len;

	if (strncmp(secret, "whsec_", 6) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid webhook_secret"),
				 errdetail("A webhook secret is \"whsec_\" followed by base64, as Standard Webhooks defines."),
				 errhint("Generate one with smartconnector.generate_webhook_secret().")));

	b64 = secret + 6;
	b64_len = strlen(b64);
	max_len = pg_b64_dec_len(b64_len);
	decoded = palloc(max_len + 1);
	decoded_len = (b64_len == 0) ? -1 : pg_b64_decode(b64, b64_len, decoded, max_len);
	if (decoded_len < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid webhook_secret"),
				 errdetail("The part after \"whsec_\" is not valid base64."),
				 errhint("Generate one with smartconnector.generate_webhook_secret().")));
	if (decoded_len < SC_MIN_SECRET_BYTES || decoded_len > SC_MAX_SECRET_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid webhook_secret"),
				 errdetail("The secret decodes to %d bytes; it must be between %d and %d bytes.",
						   decoded_len, SC_MIN_SECRET_BYTES, SC_MAX_SECRET_BYTES),
				 errhint("Generate one with smartconnector.generate_webhook_secret().")));

	explicit_bzero(decoded, max_len + 1);
	pfree(decoded);
	PG_RETURN_VOID();
}

/*
 * generate_webhook_secret() returns text
 *
 * A fresh Standard Webhooks secret: "whsec_" + base64 of 32 random bytes.
 */
Datum
generate_webhook_secret(PG_FUNCTION_ARGS)
{
	uint8		raw[32];
	int			enc_len = pg_b64_enc_len(sizeof(raw));
	char	   *out = palloc(6 + enc_len + 1);
	int			written;

	if (!pg_strong_random(raw, sizeof(raw)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes for a webhook secret")));

	memcpy(out, "whsec_", 6);
	written = pg_b64_encode((const char *) raw, sizeof(raw), out + 6, enc_len);
	explicit_bzero(raw, sizeof(raw));
	if (written < 0)
		elog(ERROR, "could not base64-encode a webhook secret");
	out[6 + written] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text(out));
}

/*
 * Is name (any case) a header the dispatcher controls itself?
 */
static bool
is_reserved_header(const char *name)
{
	for (int i = 0; reserved_headers[i] != NULL; i++)
	{
		if (pg_strcasecmp(name, reserved_headers[i]) == 0)
			return true;
	}
	return strncasecmp(name, "proxy-", 6) == 0;
}

/*
 * check_webhook_headers(headers jsonb) returns void
 *
 * webhook_headers must be a flat object of string values with valid, unique
 * (case-insensitively) header names that do not override the headers the
 * dispatcher sets, and values without control characters (which would let
 * a value inject further headers).  Values are never echoed.
 */
Datum
check_webhook_headers(PG_FUNCTION_ARGS)
{
	Jsonb	   *headers = PG_GETARG_JSONB_P(0);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	List	   *seen = NIL;
	ListCell   *lc;
	char	   *name = NULL;
	int			count = 0;

	if (!JB_ROOT_IS_OBJECT(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid webhook_headers"),
				 errdetail("webhook_headers must be a JSON object of header names and string values."),
				 errhint("For example: {\"Authorization\": \"Bearer ...\"}.")));

	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			name = pnstrdup(v.val.string.val, v.val.string.len);
			if (++count > SC_MAX_HEADERS)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid webhook_headers"),
						 errdetail("At most %d headers are allowed.", SC_MAX_HEADERS)));
			if (v.val.string.len == 0 || v.val.string.len > SC_MAX_HEADER_NAME_LENGTH)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid webhook_headers"),
						 errdetail("A header name must be 1 to %d characters long.",
								   SC_MAX_HEADER_NAME_LENGTH)));
			for (int i = 0; i < v.val.string.len; i++)
			{
				if (!is_tchar((unsigned char) name[i]))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("invalid webhook_headers"),
							 errdetail("The header name \"%s\" contains a character that HTTP does not allow in header names.",
									   name)));
			}
			if (is_reserved_header(name))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid webhook_headers"),
						 errdetail("The header \"%s\" is set by smartconnector and cannot be overridden.",
								   name)));
			foreach(lc, seen)
			{
				if (pg_strcasecmp((char *) lfirst(lc), name) == 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("invalid webhook_headers"),
							 errdetail("The header \"%s\" is given twice (header names are case-insensitive).",
									   name)));
			}
			seen = lappend(seen, name);
		}
		else if (tok == WJB_VALUE)
		{
			if (v.type != jbvString)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid webhook_headers"),
						 errdetail("The value of header \"%s\" must be a JSON string.", name)));
			if (v.val.string.len > SC_MAX_HEADER_VALUE_LENGTH)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid webhook_headers"),
						 errdetail("The value of header \"%s\" is longer than %d characters.",
								   name, SC_MAX_HEADER_VALUE_LENGTH)));
			for (int i = 0; i < v.val.string.len; i++)
			{
				unsigned char c = (unsigned char) v.val.string.val[i];

				if ((c < 0x20 && c != '\t') || c == 0x7f)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("invalid webhook_headers"),
							 errdetail("The value of header \"%s\" contains a control character.",
									   name)));
			}
		}
	}
	PG_RETURN_VOID();
}

/*
 * caller_trigger_type() returns text: how trigger() was reached.
 *
 * "schedule" from a pg_cron job, whether pg_cron runs it in one of its
 * background workers or through a libpq connection (application_name
 * "pg_cron"); "manual" from psql; "api" from anything else.
 */
Datum
caller_trigger_type(PG_FUNCTION_ARGS)
{
	const char *appname = GetConfigOption("application_name", true, false);
	const char *type = "api";

	if ((MyBgworkerEntry != NULL && strcmp(MyBgworkerEntry->bgw_library_name, "pg_cron") == 0) ||
		(appname != NULL && strcmp(appname, "pg_cron") == 0))
		type = "schedule";
	else if (appname != NULL && strcmp(appname, "psql") == 0)
		type = "manual";
	PG_RETURN_TEXT_P(cstring_to_text(type));
}

/*
 * A viewer may read every column of smartconnector.connector except the
 * secrets, so "SELECT * FROM smartconnector.connector", the first thing one
 * types, fails with PostgreSQL's bare "permission denied for table
 * connector".  Just after parse analysis, before the executor's privilege
 * check would say that, a query that reads columns of the table, some of
 * them not readable by the role, gets the same error (42501) with the
 * columns it may not read and the way to the others.  Roles that may read
 * no column at all get PostgreSQL's own error, unexplained.  Only the
 * query's own range table is looked at (not subqueries or CTEs).
 */
static post_parse_analyze_hook_type prev_post_parse_analyze = NULL;

static void
explain_connector_columns(RangeTblEntry *rte)
{
	Oid			user = OidIsValid(rte->checkAsUser) ? rte->checkAsUser : GetUserId();
	StringInfoData denied;
	StringInfoData readable;
	bool		whole_row;
	HeapTuple	tup;
	int			n_denied = 0;

	if (pg_class_aclcheck(rte->relid, user, ACL_SELECT) == ACLCHECK_OK ||
		pg_attribute_aclcheck_all(rte->relid, user, ACL_SELECT, ACLMASK_ANY) != ACLCHECK_OK)
		return;

	whole_row = bms_is_member(InvalidAttrNumber - FirstLowInvalidHeapAttributeNumber,
							  rte->selectedCols);
	initStringInfo(&denied);
	initStringInfo(&readable);
	for (AttrNumber att = 1;
		 HeapTupleIsValid(tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(rte->relid), Int16GetDatum(att)));
		 att++)
	{
		Form_pg_attribute form = (Form_pg_attribute) GETSTRUCT(tup);
		char	   *name = pstrdup(NameStr(form->attname));
		bool		dropped = form->attisdropped;
		StringInfo	into;

		ReleaseSysCache(tup);
		if (dropped)
			continue;
		if (pg_attribute_aclcheck(rte->relid, att, user, ACL_SELECT) == ACLCHECK_OK)
			into = &readable;
		else if (whole_row ||
				 bms_is_member(att - FirstLowInvalidHeapAttributeNumber, rte->selectedCols))
			into = &denied;
		else
			continue;
		appendStringInfo(into, "%s%s", into->len > 0 ? ", " : "", name);
		if (into == &denied)
			n_denied++;
	}
	if (denied.len == 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for table %s", get_rel_name(rte->relid)),
			 errdetail_plural("Role \"%s\" may not read column %s.",
							  "Role \"%s\" may not read columns %s.", n_denied,
							  GetUserNameFromId(user, false), denied.data),
			 errhint("Select only readable columns (%s), or call smartconnector.describe(api_name).",
					 readable.data)));
}

static void
connector_columns_hook(ParseState *pstate, Query *query, JumbleState *jstate)
{
	Oid			nsp;
	Oid			connector;

	if (prev_post_parse_analyze)
		prev_post_parse_analyze(pstate, query, jstate);
	if (query->commandType != CMD_SELECT || query->rtable == NIL || !IsTransactionState())
		return;
	nsp = get_namespace_oid("smartconnector", true);
	if (!OidIsValid(nsp))
		return;
	connector = get_relname_relid("connector", nsp);
	if (!OidIsValid(connector))
		return;
	for (ListCell *lc = list_head(query->rtable); lc != NULL; lc = lnext(query->rtable, lc))
	{
		RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);

		if (rte->rtekind == RTE_RELATION && rte->relid == connector &&
			(rte->requiredPerms & ACL_SELECT) != 0)
		{
			/* looked up last: a catalog scan, where the two above are cached */
			if (!OidIsValid(get_extension_oid("smartconnector", true)))
				return;			/* a schema of that name, but not ours */
			explain_connector_columns(rte);
		}
	}
}

void
sc_install_column_hint_hook(void)
{
	prev_post_parse_analyze = post_parse_analyze_hook;
	post_parse_analyze_hook = connector_columns_hook;
}
