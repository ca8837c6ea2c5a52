/*
 * fuzz_logs: `pullproxy logs` reading a log through logs_line, then both
 * summaries. Input: the log, lines split at '\n'. Invariant: when every
 * line is empty or starts with '{' (and has no CR or NUL), the summary is
 * the same bare, behind kubectl's --timestamps time, and as a CRI log
 * file with every line cut into 7-byte P parts and an F part.
 */
#include "fuzz.h"
#include "logs.h"

#define FUZZ_TS		"2026-12-03T06:49:01.123456789Z"
#define FUZZ_PART	7

/* The log in one of its shapes: 0 bare, 1 kubectl, 2 CRI. */
static char *
fuzz_logs_shape(const uint8_t *data, size_t size, int shape, size_t *outlen)
{
	const uint8_t *p = data, *end = data + size, *nl;
	char *out = NULL;
	size_t len, off, n;
	FILE *f;

	if ((f = open_memstream(&out, outlen)) == NULL)
		abort();
	for (; p < end; p = nl + 1) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			nl = end;
		len = (size_t)(nl - p);
		if (shape == 0)
			fwrite(p, 1, len, f);
		else if (shape == 1) {
			fputs(FUZZ_TS " ", f);
			fwrite(p, 1, len, f);
		} else {
			for (off = 0; len - off > FUZZ_PART; off += FUZZ_PART) {
				fputs(FUZZ_TS " stderr P ", f);
				fwrite(p + off, 1, FUZZ_PART, f);
				fputc('\n', f);
			}
			n = len - off;
			fputs(FUZZ_TS " stderr F ", f);
			fwrite(p + off, 1, n, f);
		}
		fputc('\n', f);
	}
	if (fclose(f) != 0)
		abort();
	return out;
}

/* Summarise buf's lines: the JSON summary (caller frees). */
static char *
fuzz_logs_run(const char *buf, size_t size)
{
	const char *p = buf, *end = buf + size, *nl;
	struct logs *ls;
	char *json, *text = NULL;
	size_t textlen;
	json_t *o;
	FILE *f;

	if ((ls = logs_new(0)) == NULL)
		abort();
	for (; p < end; p = nl + 1) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			nl = end;
		logs_line(ls, p, (size_t)(nl - p));
	}
	o = logs_json(ls);
	json = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	FUZZ_CHECK(json != NULL);
	json_decref(o);
	if ((f = open_memstream(&text, &textlen)) == NULL)
		abort();
	logs_print(ls, f);
	fclose(f);
	FUZZ_CHECK(textlen > 0);
	free(text);
	logs_free(ls);
	return json;
}

/* Lines a shape cannot change: empty, or starting with '{'. */
static int
fuzz_logs_plain(const uint8_t *data, size_t size)
{
	size_t i;

	for (i = 0; i < size; i++) {
		if (data[i] == '\r' || data[i] == '\0')
			return 0;
		if ((i == 0 || data[i - 1] == '\n') && data[i] != '{' &&
		    data[i] != '\n')
			return 0;
	}
	return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *shaped, *sum[3];
	size_t len;
	int i;

	for (i = 0; i < 3; i++) {
		shaped = fuzz_logs_shape(data, size, i, &len);
		sum[i] = fuzz_logs_run(shaped, len);
		free(shaped);
	}
	/* Whatever the input, the raw bytes are read without harm too. */
	free(fuzz_logs_run((const char *)data, size));
	if (fuzz_logs_plain(data, size)) {
		FUZZ_CHECK(strcmp(sum[0], sum[1]) == 0);
		FUZZ_CHECK(strcmp(sum[0], sum[2]) == 0);
	}
	for (i = 0; i < 3; i++)
		free(sum[i]);
	return 0;
}
