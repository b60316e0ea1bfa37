/*-------------------------------------------------------------------------
 *
 * url.c
 *		Webhook URLs: check_webhook_url() and url_host(), with libcurl's URL
 *		API, so that the database accepts exactly the URLs the dispatcher
 *		can post to, and per-host limits key on the host as libcurl sees it.
 *
 * Rule: no ereport(ERROR) while a curl object is alive.  Every function
 * gathers what it needs from curl into palloc'd memory, releases the curl
 * objects, and only then reports.  Which addresses a webhook may reach is
 * decided when it is sent (transport.c), not here: a name can resolve to
 * another address by then.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

#include "smartconnector.h"
#include "sc_curl.h"

/* The text of a URL parser error */
static const char *
url_error_text(CURLUcode rc)
{
#if SC_CURL_HAS_URL_STRERROR
	return curl_url_strerror(rc);
#else
	static char text[32];

	snprintf(text, sizeof(text), "URL error %d", (int) rc);
	return text;
#endif
}


PG_FUNCTION_INFO_V1(check_webhook_url);

/* What curl_url told us about a URL, copied out of curl's memory */
typedef struct ParsedUrl
{
	CURLUcode	rc;				/* result of parsing the whole URL */
	char	   *scheme;			/* lowercased by curl; NULL when absent */
	char	   *host;
	bool		has_user;
	bool		has_password;
} ParsedUrl;

static void parse_url(const char *url, ParsedUrl *out);
static char *curl_part(CURLU *h, CURLUPart part);

/*
 * Copy one URL part out of curl's memory, or NULL when it is absent.
 */
static char *
curl_part(CURLU *h, CURLUPart part)
{
	char	   *value = NULL;
	char	   *copy = NULL;

	if (curl_url_get(h, part, &value, 0) == CURLUE_OK && value != NULL)
		copy = pstrdup(value);
	curl_free(value);
	return copy;
}

/*
 * Parse url with libcurl, accepting any scheme so that a wrong scheme can be
 * reported as such rather than as a malformed URL.
 */
static void
parse_url(const char *url, ParsedUrl *out)
{
	CURLU	   *h = curl_url();
	char	   *user;
	char	   *password;

	memset(out, 0, sizeof(*out));
	if (h == NULL)
		elog(ERROR, "out of memory in curl_url()");

	out->rc = curl_url_set(h, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
	if (out->rc == CURLUE_OK)
	{
		out->scheme = curl_part(h, CURLUPART_SCHEME);
		out->host = curl_part(h, CURLUPART_HOST);
		user = curl_part(h, CURLUPART_USER);
		password = curl_part(h, CURLUPART_PASSWORD);
		out->has_user = (user != NULL);
		out->has_password = (password != NULL);
	}
	curl_url_cleanup(h);
}

/*
 * check_webhook_url(url text) returns void
 *
 * Refuse anything but an absolute http or https URL with a host and without
 * credentials.  Credentials are refused because viewers can read the URL;
 * they belong in webhook_headers, which viewers cannot read.  The URL is
 * never echoed in an error: a refused one may hold credentials.
 */
Datum
check_webhook_url(PG_FUNCTION_ARGS)
{
	text	   *arg = PG_GETARG_TEXT_PP(0);
	char	   *url = text_to_cstring(arg);
	size_t		len = strlen(url);
	ParsedUrl	parsed;

	if (len > SC_MAX_URL_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid execution_ended_webhook_url"),
				 errdetail("The URL is %zu characters long; at most %d are allowed.",
						   len, SC_MAX_URL_LENGTH)));

	for (const char *p = url; *p; p++)
	{
		if ((unsigned char) *p <= 0x20 || (unsigned char) *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid execution_ended_webhook_url"),
					 errdetail("The URL contains white space or a control character."),
					 errhint("Percent-encode spaces as %%20.")));
	}

	if (strstr(url, "://") == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid execution_ended_webhook_url"),
				 errdetail("The URL must be absolute, beginning with http:// or https://.")));

	parse_url(url, &parsed);

	if (parsed.rc != CURLUE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid execution_ended_webhook_url"),
				 errdetail("libcurl cannot parse it: %s.", url_error_text(parsed.rc)),
				 errhint("Give an absolute URL such as https://example.com/hooks/smartconnector.")));

	if (parsed.scheme == NULL ||
		(strcmp(parsed.scheme, "http") != 0 && strcmp(parsed.scheme, "https") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid execution_ended_webhook_url"),
				 errdetail("The scheme \"%s\" is not allowed; only http and https are.",
						   parsed.scheme ? parsed.scheme : "")));

	if (parsed.has_user || parsed.has_password)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid execution_ended_webhook_url"),
				 errdetail("Credentials are not allowed in the URL, because viewers can read it."),
				 errhint("Put credentials in webhook_headers, for example {\"Authorization\": \"Bearer ...\"}.")));

	if (parsed.host == NULL || parsed.host[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid execution_ended_webhook_url"),
				 errdetail("The URL has no host.")));

	PG_RETURN_VOID();
}

/*
 * Whether a URL carries a user name or password (smtp://user:password@host).
 */
bool
sc_url_has_credentials(const char *url)
{
	ParsedUrl	parsed;

	parse_url(url, &parsed);
	return parsed.has_user || parsed.has_password;
}

/*
 * url_host(url text) returns text: "host:port" as libcurl sees it, the key
 * for per-host connection limits.
 */
PG_FUNCTION_INFO_V1(url_host);

Datum
url_host(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CURLU	   *h = curl_url();
	char	   *host = NULL;
	char	   *port = NULL;
	char	   *result;

	if (h == NULL)
		elog(ERROR, "out of memory in curl_url()");
	if (curl_url_set(h, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK)
	{
		host = curl_part(h, CURLUPART_HOST);
		if (curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
			port = NULL;
	}
	result = psprintf("%s:%s", host ? host : "", port ? port : "");
	curl_free(port);
	curl_url_cleanup(h);
	PG_RETURN_TEXT_P(cstring_to_text(result));
}
