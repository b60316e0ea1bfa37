/*
 * curl_ceiling.c: the ceiling for the dispatch benchmark.  A plain libcurl
 * multi client, no database: posts every line of a file (one JSON body per
 * line) to a URL, with the same headers the dispatcher sends and at most
 * PARALLEL transfers (and connections) at once, reusing connections.
 *
 * Usage: curl_ceiling URL FILE PARALLEL   prints: requests seconds requests_per_second
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char **bodies;
static long nbodies;

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t
discard(char *p, size_t s, size_t n, void *u)
{
	(void) p;
	(void) u;
	return s * n;
}

static void
start(CURLM *multi, const char *url, long i, struct curl_slist *headers)
{
	CURL	   *e = curl_easy_init();

	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, bodies[i]);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long) strlen(bodies[i]));
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_multi_add_handle(multi, e);
}

int
main(int argc, char **argv)
{
	FILE	   *f;
	char	   *line = NULL;
	size_t		cap = 0;
	ssize_t		len;
	long		parallel, next = 0, done = 0, failed = 0;
	CURLM	   *multi;
	struct curl_slist *headers = NULL;
	double		t0;
	int			running = 1;

	if (argc != 4)
	{
		fprintf(stderr, "usage: %s URL FILE PARALLEL\n", argv[0]);
		return 2;
	}
	parallel = atol(argv[3]);
	f = fopen(argv[2], "r");
	if (!f)
	{
		perror(argv[2]);
		return 2;
	}
	while ((len = getline(&line, &cap, f)) > 0)
	{
		if (line[len - 1] == '\n')
			line[len - 1] = '\0';
		bodies = realloc(bodies, sizeof(char *) * (nbodies + 1));
		bodies[nbodies++] = strdup(line);
	}
	fclose(f);

	curl_global_init(CURL_GLOBAL_DEFAULT);
	multi = curl_multi_init();
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, parallel);
	headers = curl_slist_append(headers, "Content-Type: application/json");
	headers = curl_slist_append(headers, "User-Agent: curl-ceiling");
	headers = curl_slist_append(headers, "webhook-id: msg_ceiling");
	headers = curl_slist_append(headers, "webhook-timestamp: 0");
	headers = curl_slist_append(headers, "webhook-signature: v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
	headers = curl_slist_append(headers, "Expect:");

	t0 = now();
	while (next < nbodies && next < parallel)
		start(multi, argv[1], next++, headers);
	while (done < nbodies)
	{
		CURLMsg    *m;
		int			left;

		curl_multi_perform(multi, &running);
		while ((m = curl_multi_info_read(multi, &left)) != NULL)
		{
			long		status = 0;

			if (m->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
			if (m->data.result != CURLE_OK || status < 200 || status > 299)
				failed++;
			curl_multi_remove_handle(multi, m->easy_handle);
			curl_easy_cleanup(m->easy_handle);
			done++;
			if (next < nbodies)
				start(multi, argv[1], next++, headers);
		}
		if (done < nbodies)
			curl_multi_poll(multi, NULL, 0, 100, NULL);
	}
	printf("%ld %.3f %.0f %ld\n", nbodies, now() - t0, nbodies / (now() - t0), failed);
	curl_slist_free_all(headers);
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	return failed ? 1 : 0;
}
