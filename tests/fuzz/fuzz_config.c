/*
 * fuzz_config: the INI file (config_load_file) and the serve flags
 * (config_parse_args), then the whole-config checks. Input: the file; after
 * a NUL byte, flags one per line ("--flag=value" or "--flag" "value").
 * --config is left out: it would read any file the input names.
 */
#include <sys/mman.h>

#include <unistd.h>

#include "config.h"
#include "fuzz.h"

#define FUZZ_ARGS_MAX	16

static int fuzz_fd = -1;

/* The file part in a memory file, named by /proc/self/fd. */
static void
fuzz_load(struct config *cfg, const uint8_t *data, size_t size)
{
	char path[64], err[CONFIG_ERR_MAX];

	if (fuzz_fd == -1 && (fuzz_fd = memfd_create("fuzz.conf", 0)) == -1)
		abort();
	if (ftruncate(fuzz_fd, 0) == -1 ||
	    pwrite(fuzz_fd, data, size, 0) != (ssize_t)size)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fuzz_fd);
	err[0] = '\0';
	if (config_load_file(cfg, path, err, sizeof(err)) == -1)
		/* One line naming the file. */
		FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0 &&
		    strchr(err, '\n') == NULL);
}

static void
fuzz_args(struct config *cfg, char *flags)
{
	char *argv[FUZZ_ARGS_MAX + 1], err[CONFIG_ERR_MAX], *p;
	int argc = 1;

	argv[0] = "serve";
	for (p = strtok(flags, "\n"); p != NULL && argc < FUZZ_ARGS_MAX;
	    p = strtok(NULL, "\n"))
		argv[argc++] = p;
	argv[argc] = NULL;
	for (int i = 1; i < argc; i++)
		if (strncmp(argv[i], "--config", 8) == 0)
			return;
	if (config_parse_args(cfg, argc, argv, err, sizeof(err)) == -1)
		FUZZ_CHECK(err[0] != '\0' && strchr(err, '\n') == NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t flen = nul != NULL ? (size_t)(nul - data) : size;
	struct config cfg;
	char err[CONFIG_ERR_MAX], *flags = NULL;

	config_init(&cfg);
	fuzz_load(&cfg, data, flen);
	if (nul != NULL) {
		flags = fuzz_str(nul + 1, size - flen - 1);
		fuzz_args(&cfg, flags);
	}
	if (config_check(&cfg, err, sizeof(err)) == 0) {
		FUZZ_CHECK(cfg.nregistries > 0);
		FUZZ_CHECK(config_registry_find(&cfg, NULL) ==
		    &cfg.registries[0]);
	}
	config_free(&cfg);
	free(flags);
	return 0;
}
