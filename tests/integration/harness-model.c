/* SPDX-License-Identifier: Apache-2.0 */
/* The bundled model for engine-generator integration tests (see harness-model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/error.h"
#include "engine/text/tokenizer.h"
#include "tests/integration/harness-model.h"
#include "tests/integration/harness.h"

void th_model_require(struct th_model *m)
{
    const char *src = getenv("RESIDENT_SOURCE_ROOT"), *build = getenv("RESIDENT_BUILD_ROOT");
    snprintf(m->model_dir, sizeof(m->model_dir), "%s/tests/data/default-model", src ? src : ".");
    snprintf(m->engine_exe, sizeof(m->engine_exe), "%s/engine/resident-engine", build ? build : ".");
    if (access(m->engine_exe, X_OK) != 0) {
        printf("SKIP: %s is not built (the offline reference)\n", m->engine_exe);
        exit(77);
    }
    th_require_uring();
    struct tokenizer *tok = NULL;
    struct engine_error e = { 0 };
    if (tokenizer_load(m->model_dir, &tok, &e) < 0) {
        printf("SKIP: no bundled model at %s: %s\n", m->model_dir, e.msg);
        exit(77);
    }
    m->real_vocab = tokenizer_token_count(tok);
    m->im_end_id = tokenizer_token_to_id(tok, "<|im_end|>");
    tokenizer_free(tok);
    TH_CHECK(m->im_end_id > 0);
}
