/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Corpus replayer: links against a libFuzzer-style harness
 * (LLVMFuzzerTestOneInput) and feeds it every file of the directories or
 * files named on the command line, so each fuzz corpus runs as a normal test
 * under gcc and the sanitizer build, without libFuzzer. A crash, sanitizer
 * report or non-zero harness return fails the test. An empty corpus fails:
 * a replay that ran nothing must not pass.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path, size_t *count)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return -1;
    }
    long n = ftell(f);
    rewind(f);
    if (n < 0) {
        fclose(f);
        return -1;
    }
    /* Copy into an exact-size heap buffer so ASan catches any read past the
     * end of the input. */
    uint8_t *buf = malloc(n ? (size_t)n : 1);
    if (!buf || (n && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    int rc = LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    if (rc != 0) {
        fprintf(stderr, "replay: harness returned %d on %s\n", rc, path);
        return -1;
    }
    (*count)++;
    return 0;
}

static int run_path(const char *path, size_t *count)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return run_file(path, count);

    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0) {
        fprintf(stderr, "replay: cannot list %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.' && rc == 0) {
            char full[4096];
            snprintf(full, sizeof(full), "%s/%s", path, names[i]->d_name);
            rc = run_path(full, count);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    size_t count = 0;
    for (int i = 1; i < argc; i++)
        if (run_path(argv[i], &count) != 0)
            return 1;
    if (count == 0) {
        fprintf(stderr, "replay: no corpus inputs found\n");
        return 1;
    }
    printf("replay: %zu inputs ok\n", count);
    return 0;
}
