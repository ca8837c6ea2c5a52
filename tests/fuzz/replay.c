/*
 * replay: feeds files to a fuzz target's LLVMFuzzerTestOneInput without
 * libFuzzer, so that every build (gcc, ASan+UBSan) runs the seed corpus
 * and the inputs that once crashed. Arguments: files, or directories
 * whose regular files are all fed. A crash is the sanitizer's report.
 */
#include <sys/stat.h>

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Exactly the file's bytes, in a buffer of that size (ASan sees overreads). */
static int
replay_file(const char *path)
{
	FILE *f;
	uint8_t *buf;
	long len;

	if ((f = fopen(path, "rb")) == NULL || fseek(f, 0, SEEK_END) == -1 ||
	    (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) == -1) {
		fprintf(stderr, "replay: %s: cannot read\n", path);
		if (f != NULL)
			fclose(f);
		return -1;
	}
	if ((buf = malloc(len > 0 ? (size_t)len : 1)) == NULL ||
	    fread(buf, 1, (size_t)len, f) != (size_t)len) {
		fprintf(stderr, "replay: %s: cannot read\n", path);
		free(buf);
		fclose(f);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t)len);
	free(buf);
	return 0;
}

int
main(int argc, char **argv)
{
	struct dirent *e;
	struct stat st;
	char path[4096];
	DIR *d;
	int i, n = 0, rc = 0;

	for (i = 1; i < argc; i++) {
		if (stat(argv[i], &st) == -1) {
			fprintf(stderr, "replay: %s: no such file\n", argv[i]);
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			rc |= replay_file(argv[i]);
			n++;
			continue;
		}
		if ((d = opendir(argv[i])) == NULL)
			return 1;
		while ((e = readdir(d)) != NULL) {
			if (e->d_name[0] == '.')	/* .keep holds a dir */
				continue;
			snprintf(path, sizeof(path), "%s/%s", argv[i],
			    e->d_name);
			if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
				rc |= replay_file(path);
				n++;
			}
		}
		closedir(d);
	}
	printf("replay: %d inputs\n", n);
	return rc != 0;
}
