/*
 * fuzz: what the targets share. A target is LLVMFuzzerTestOneInput over
 * one parser; libFuzzer drives it (-Dfuzz=true) or replay.c feeds it the
 * corpus. An invariant a parser breaks is a crash, like a sanitizer's.
 */
#ifndef PP_FUZZ_H
#define PP_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "%s:%d: invariant broken: %s\n",	\
		    __FILE__, __LINE__, #cond);				\
		abort();						\
	}								\
} while (0)

/* The input as a C string (it ends at its first NUL, as a header would). */
static inline char *
fuzz_str(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (s == NULL)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

/*
 * Split s in place at each sep into at most n parts; the last takes the
 * rest. Missing parts are "".
 */
static inline void
fuzz_split(char *s, char sep, char **parts, size_t n)
{
	static char empty[1];
	size_t i;
	char *p;

	for (i = 0; i < n; i++) {
		parts[i] = s != NULL ? s : empty;
		if (s != NULL && i + 1 < n && (p = strchr(s, sep)) != NULL) {
			*p = '\0';
			s = p + 1;
		} else
			s = NULL;
	}
}

#endif
