/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Loading a model from shard images already in memory (model_params.
 * shard_images -> st_set_open_dir_images), the path residentd takes after a
 * restart through systemd's fd store:
 *   - the logits of a 7-token prefill equal those of a load from the files
 *     bit for bit (tolerance 0: the same bytes go through the same kernels),
 *     on every fixture and on tests/data/default-model;
 *   - no shard file is opened (model_files_opened() == 0; a file load
 *     reports one per shard);
 *   - stale or broken images are refused with a message naming the shard:
 *     a missing shard, a size that differs from the file, a corrupted
 *     header, an unaligned image, an empty image list.
 * Images are read-only mappings of memfds, as the daemon's container is.
 * Exits 77 when tests/data has no fixtures.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/test-goldens.h"

#define MAX_IMAGES 16

struct images {
    struct st_image img[MAX_IMAGES];
    char            name[MAX_IMAGES][256];
    uint32_t        n;
};

/* Copy one file into a fresh memfd and map it read-only (page aligned). */
static const void *image_of(const char *path, uint64_t *size, uint32_t flip_at, int flip)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    int mfd = memfd_create("test-image", MFD_CLOEXEC);
    assert_true(mfd >= 0);
    assert_int_equal(ftruncate(mfd, st.st_size), 0);
    uint8_t *w = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    assert_true(w != MAP_FAILED);
    for (off_t pos = 0; pos < st.st_size;) {
        ssize_t n = pread(fd, w + pos, (size_t)(st.st_size - pos), pos);
        assert_true(n > 0);
        pos += n;
    }
    if (flip)
        w[flip_at] ^= 0xff;
    munmap(w, (size_t)st.st_size);
    const void *r = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, mfd, 0);
    assert_true(r != MAP_FAILED);
    close(mfd);
    close(fd);
    *size = (uint64_t)st.st_size;
    return r;
}

static void images_load(const char *dir, struct images *im)
{
    memset(im, 0, sizeof(*im));
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l <= 12 || strcmp(de->d_name + l - 12, ".safetensors") != 0)
            continue;
        assert_true(im->n < MAX_IMAGES && l < sizeof(im->name[0]));
        char path[1400];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        memcpy(im->name[im->n], de->d_name, l + 1);
        im->img[im->n].name = im->name[im->n];
        im->img[im->n].data = image_of(path, &im->img[im->n].size, 0, 0);
        im->n++;
    }
    closedir(d);
    assert_true(im->n > 0);
}

static void images_free(struct images *im)
{
    for (uint32_t i = 0; i < im->n; i++)
        if (im->img[i].data)
            munmap((void *)(uintptr_t)im->img[i].data, im->img[i].size);
}

static struct model *load(const char *dir, const struct images *im, struct engine_error *err, int *rc)
{
    struct model_params p = MODEL_PARAMS_DEFAULT;
    p.max_context = 64;
    if (im) {
        p.shard_images = im->img;
        p.n_shard_images = im->n;
    }
    struct model *m = NULL;
    *rc = model_load(dir, &p, &m, err);
    return m;
}

static float *prefill_logits(struct model *m, int64_t n)
{
    const int32_t V = model_vocab(m);
    int32_t ids[16];
    for (int64_t i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 7919 + 11) % model_real_vocab(m));
    struct model_seq *s = NULL;
    struct engine_error err = { 0 };
    if (model_seq_new(m, 0, &s, &err))
        fail_msg("seq: %s", err.msg);
    float *logits = malloc((size_t)n * (size_t)V * sizeof(float));
    assert_non_null(logits);
    struct model_prefill_params pp = { .logits = logits, .all_logits = true };
    if (model_prefill(m, s, ids, n, &pp, &err))
        fail_msg("prefill: %s", err.msg);
    model_seq_free(s);
    return logits;
}

static void check_equal(const char *dir)
{
    struct engine_error err = { 0 };
    int rc;
    struct model *disk = load(dir, NULL, &err, &rc);
    if (rc)
        fail_msg("%s: %s", dir, err.msg);
    struct images im;
    images_load(dir, &im);
    struct model *mem = load(dir, &im, &err, &rc);
    if (rc)
        fail_msg("%s from images: %s", dir, err.msg);
    assert_true(model_files_opened(disk) > 0);
    assert_int_equal(model_files_opened(mem), 0);
    assert_int_equal(model_mapped_bytes(disk), model_mapped_bytes(mem));

    const int64_t n = 7;
    const size_t count = (size_t)n * (size_t)model_vocab(disk);
    float *a = prefill_logits(disk, n), *b = prefill_logits(mem, n);
    size_t differ = 0;
    for (size_t i = 0; i < count; i++)
        differ += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    printf("%s: %u shard files opened by the file load, %u by the image load; %zu of %zu logits "
           "differ (tolerance: 0, bitwise)\n", dir, model_files_opened(disk), model_files_opened(mem),
           differ, count);
    assert_int_equal(differ, 0);
    free(a);
    free(b);
    model_free(mem);
    model_free(disk);
    images_free(&im);
}

static void test_fixtures_equal(void **state)
{
    (void)state;
    char dir[1200];
    for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
        snprintf(dir, sizeof(dir), "%s/models/%s", data_dir, fixtures[i].model);
        check_equal(dir);
    }
    snprintf(dir, sizeof(dir), "%s/default-model", data_dir);
    check_equal(dir);
}

static void expect_refused(const char *dir, const struct images *im, int want, const char *needle)
{
    struct engine_error err = { 0 };
    int rc;
    struct model *m = load(dir, im, &err, &rc);
    printf("refused (%d): %s\n", rc, err.msg);
    assert_null(m);
    assert_int_equal(rc, want);
    if (!strstr(err.msg, needle))
        fail_msg("message \"%s\" does not name \"%s\"", err.msg, needle);
}

static void test_stale_refused(void **state)
{
    (void)state;
    char dir[1200];
    snprintf(dir, sizeof(dir), "%s/models/tiny-w4g32", data_dir);
    struct images im;
    images_load(dir, &im);
    /* the index names model-00002-of-00004: drop its image */
    uint32_t k = 0;
    while (k < im.n && strcmp(im.name[k], "model-00002-of-00004.safetensors") != 0)
        k++;
    assert_true(k < im.n);
    struct images miss = im;
    miss.img[k].name = "model-00002-of-00004.safetensors.old";
    expect_refused(dir, &miss, -ESTALE, "model-00002-of-00004.safetensors");

    /* an image of another size than the file (the file was replaced) */
    struct images sz = im;
    sz.img[k].size -= 8;
    expect_refused(dir, &sz, -ESTALE, "model-00002-of-00004.safetensors");

    /* a corrupted header length: parsed like a corrupted file */
    char path[1400];
    int pn = snprintf(path, sizeof(path), "%s/%s", dir, im.name[k]);
    assert_true(pn > 0 && (size_t)pn < sizeof(path));
    struct images bad = im;
    bad.img[k].data = image_of(path, &bad.img[k].size, 7, 1);
    expect_refused(dir, &bad, -EFBIG, "model-00002-of-00004.safetensors");
    munmap((void *)(uintptr_t)bad.img[k].data, bad.img[k].size);

    /* not page aligned (tensor alignment is checked as a file offset) */
    struct images un = im;
    un.img[k].data = (const uint8_t *)im.img[k].data + 8;
    un.img[k].size = im.img[k].size;
    expect_refused(dir, &un, -EINVAL, "page boundary");

    struct engine_error err = { 0 };
    struct st_set *set = NULL;
    assert_int_equal(st_set_open_dir_images(dir, im.img, 0, &set, &err), -EINVAL);
    assert_null(set);
    images_free(&im);
}

int main(void)
{
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    snprintf(data_dir, sizeof(data_dir), "%s/tests/data", root ? root : ".");
    char probe[1200];
    snprintf(probe, sizeof(probe), "%s/models/%s/config.json", data_dir, fixtures[0].model);
    if (access(probe, R_OK) != 0) {
        printf("SKIP: no fixtures under %s\n", data_dir);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures_equal),
        cmocka_unit_test(test_stale_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
