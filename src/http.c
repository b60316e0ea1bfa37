/*-------------------------------------------------------------------------
 *
 * http.c
 *		Everything that touches libcurl.  For now: parsing and validating
 *		webhook URLs with libcurl's URL API, so the database accepts exactly
 *		the URLs the dispatcher will later be able to post to.
 *
 * Rule: no ereport(ERROR) while a curl object is alive.  Every function
 * gathers what it needs from curl into palloc'd memory, releases the curl
 * objects, and only then reports.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "fmgr.h"
#include "utils/builtins.h"

#include "smartconnector.h"

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
 * they belong in webhook_headers, which viewers cannot read.
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
				 errmsg("invalid execution_ended_webhook_url: \"%s\"", url),
				 errdetail("The URL must be absolute, beginning with http:// or https://.")));

	parse_url(url, &parsed);

	if (parsed.rc != CURLUE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid execution_ended_webhook_url: \"%s\"", url),
				 errdetail("libcurl cannot parse it: %s.", curl_url_strerror(parsed.rc)),
				 errhint("Give an absolute URL such as https://example.com/hooks/smartconnector.")));

	if (parsed.scheme == NULL ||
		(strcmp(parsed.scheme, "http") != 0 && strcmp(parsed.scheme, "https") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid execution_ended_webhook_url: \"%s\"", url),
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
				 errmsg("invalid execution_ended_webhook_url: \"%s\"", url),
				 errdetail("The URL has no host.")));

	PG_RETURN_VOID();
}
