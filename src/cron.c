/*-------------------------------------------------------------------------
 *
 * cron.c
 *		When a cron schedule fires next, for the overview's "next run".
 *
 * pg_cron runs the schedules; this only reads them.  Standard five-field
 * cron (minute hour day-of-month month day-of-week) with '*', lists,
 * ranges, steps and three-letter month and day names, evaluated in UTC as
 * pg_cron 1.4 does.  As in cron, when both day fields are restricted a day
 * matches if either does.  Anything else (pg_cron's interval syntax,
 * macros) yields NULL rather than a wrong answer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "pgtime.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(cron_next);

typedef struct CronSpec
{
	bool		minute[60];
	bool		hour[24];
	bool		dom[32];
	bool		month[13];
	bool		dow[8];
	bool		dom_star;
	bool		dow_star;
} CronSpec;

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
"jul", "aug", "sep", "oct", "nov", "dec", NULL};
static const char *const day_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL};

static bool parse_value(const char **p, int lo, const char *const *names, int *out);
static bool parse_field(const char *text, bool *set, int lo, int hi,
						const char *const *names, bool *star);
static bool parse_spec(const char *schedule, CronSpec *spec);
static bool day_matches(const CronSpec *spec, int mday, int wday);

/*
 * A number, or a name whose position (plus lo) is the number.
 */
static bool
parse_value(const char **p, int lo, const char *const *names, int *out)
{
	if (isdigit((unsigned char) **p))
	{
		int			v = 0;

		while (isdigit((unsigned char) **p))
		{
			v = v * 10 + (**p - '0');
			if (v > 1000)
				return false;
			(*p)++;
		}
		*out = v;
		return true;
	}
	if (names != NULL)
	{
		for (int i = 0; names[i] != NULL; i++)
		{
			if (pg_strncasecmp(*p, names[i], 3) == 0)
			{
				*out = i + lo;
				*p += 3;
				return true;
			}
		}
	}
	return false;
}

/*
 * One field: comma-separated items, each '*', 'a', 'a-b', with '/step'.
 */
static bool
parse_field(const char *text, bool *set, int lo, int hi, const char *const *names, bool *star)
{
	const char *p = text;

	*star = (strcmp(text, "*") == 0);
	for (;;)
	{
		int			from,
					to,
					step = 1;

		if (*p == '*')
		{
			from = lo;
			to = hi;
			p++;
		}
		else
		{
			if (!parse_value(&p, lo, names, &from))
				return false;
			to = from;
			if (*p == '-')
			{
				p++;
				if (!parse_value(&p, lo, names, &to))
					return false;
			}
		}
		if (*p == '/')
		{
			p++;
			if (!parse_value(&p, 0, NULL, &step) || step <= 0)
				return false;
			if (from == to && text[0] != '*')
				to = hi;		/* "a/n" means from a to the end */
		}
		if (from < lo || to > hi || from > to)
			return false;
		for (int v = from; v <= to; v += step)
			set[v] = true;
		if (*p == ',')
			p++;
		else
			return *p == '\0';
	}
}

static bool
parse_spec(const char *schedule, CronSpec *spec)
{
	char	   *copy = pstrdup(schedule);
	char	   *fields[5];
	char	   *save = NULL;
	int			n = 0;
	bool		star;

	memset(spec, 0, sizeof(*spec));
	for (char *tok = strtok_r(copy, " \t", &save); tok != NULL; tok = strtok_r(NULL, " \t", &save))
	{
		if (n == 5)
			return false;
		fields[n++] = tok;
	}
	if (n != 5)
		return false;
	if (!parse_field(fields[0], spec->minute, 0, 59, NULL, &star) ||
		!parse_field(fields[1], spec->hour, 0, 23, NULL, &star) ||
		!parse_field(fields[2], spec->dom, 1, 31, NULL, &spec->dom_star) ||
		!parse_field(fields[3], spec->month, 1, 12, month_names, &star) ||
		!parse_field(fields[4], spec->dow, 0, 7, day_names, &spec->dow_star))
		return false;
	if (spec->dow[7])
		spec->dow[0] = true;	/* 7 is Sunday too */
	return true;
}

static bool
day_matches(const CronSpec *spec, int mday, int wday)
{
	if (spec->dom_star || spec->dow_star)
		return spec->dom[mday] && spec->dow[wday];
	return spec->dom[mday] || spec->dow[wday];
}

/*
 * cron_next(schedule text, after timestamptz) returns timestamptz
 *
 * The first minute after "after" that the schedule matches, in UTC, or
 * NULL if the schedule is not standard cron or never fires within 4 years.
 */
Datum
cron_next(PG_FUNCTION_ARGS)
{
	char	   *schedule = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz after = PG_GETARG_TIMESTAMPTZ(1);
	CronSpec	spec;
	pg_time_t	t;
	struct pg_tm tm;

	if (!parse_spec(schedule, &spec))
		PG_RETURN_NULL();

	/* start at the next whole minute */
	t = (pg_time_t) timestamptz_to_time_t(after);
	t = t - (t % 60) + 60;

	for (int day = 0; day < 4 * 366 + 1; day++)
	{
		tm = *pg_gmtime(&t);
		if (spec.month[tm.tm_mon + 1] && day_matches(&spec, tm.tm_mday, tm.tm_wday))
		{
			for (int h = tm.tm_hour; h < 24; h++)
			{
				if (!spec.hour[h])
					continue;
				for (int m = (h == tm.tm_hour ? tm.tm_min : 0); m < 60; m++)
				{
					if (spec.minute[m])
					{
						pg_time_t	hit = t - tm.tm_hour * 3600 - tm.tm_min * 60 + h * 3600 + m * 60;

						PG_RETURN_TIMESTAMPTZ(time_t_to_timestamptz(hit));
					}
				}
			}
		}
		/* midnight of the next day */
		t = t - tm.tm_hour * 3600 - tm.tm_min * 60 + 86400;
	}
	PG_RETURN_NULL();
}
