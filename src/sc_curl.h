/*-------------------------------------------------------------------------
 *
 * sc_curl.h
 *		The libcurl versions smartconnector builds with, for the two files
 *		that use libcurl (url.c, transport.c) and no other.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SC_CURL_H
#define SC_CURL_H

#include <curl/curl.h>

/*
 * libcurl versions: 7.68 or newer builds (Ubuntu 20.04).  What newer ones
 * add, and what an older one costs:
 *  - 7.80 CURLOPT_PREREQFUNCTION, which re-checks the address of a reused
 *    connection before each request.  Without it, webhooks never reuse a
 *    connection while smartconnector.block_private_addresses is on, so that
 *    every request passes the check when its socket is opened (slower);
 *  - 7.80 curl_url_strerror(), for the detail of a URL curl cannot parse;
 *  - 7.85 CURLOPT_PROTOCOLS_STR (older: the CURLOPT_PROTOCOLS bitmask).
 */
#if LIBCURL_VERSION_NUM < 0x074400
#error "smartconnector needs libcurl 7.68 or newer"
#endif
#define SC_CURL_HAS_PREREQ		(LIBCURL_VERSION_NUM >= 0x075000)
#define SC_CURL_HAS_URL_STRERROR (LIBCURL_VERSION_NUM >= 0x075000)
#define SC_CURL_HAS_PROTOCOLS_STR (LIBCURL_VERSION_NUM >= 0x075500)

#endif							/* SC_CURL_H */
