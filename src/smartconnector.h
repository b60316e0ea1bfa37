/*-------------------------------------------------------------------------
 *
 * smartconnector.h
 *		Declarations shared by the smartconnector extension's source files.
 *
 * Each .c file owns one concern (see the banner of each file); this header
 * holds only what crosses file boundaries: GUC variables and the functions
 * one file offers to another.  libcurl types never appear here: http.c is
 * the only file that includes curl.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SMARTCONNECTOR_H
#define SMARTCONNECTOR_H

/* Limits on settings values, enforced by the validators in catalog.c/http.c */
#define SC_MAX_URL_LENGTH			2048
#define SC_MAX_EMAIL_LENGTH			254
#define SC_MAX_EMAIL_LOCAL_LENGTH	64
#define SC_MAX_HEADERS				32
#define SC_MAX_HEADER_NAME_LENGTH	128
#define SC_MAX_HEADER_VALUE_LENGTH	4096
#define SC_MIN_SECRET_BYTES			24
#define SC_MAX_SECRET_BYTES			64

/* GUC variables (smartconnector.c) */
extern char *sc_database_name;

/* smartconnector.c */
extern bool sc_loaded_at_startup(void);

#endif							/* SMARTCONNECTOR_H */
