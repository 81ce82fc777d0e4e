/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The bundled model and the offline reference for the integration tests
 * that compare residentd's engine generator with `resident-engine generate`
 * (test-engine.c, test-sampling.c). Links the engine's tokenizer: only those
 * tests build harness-model.c.
 */
#ifndef RESIDENT_TESTS_INTEGRATION_HARNESS_MODEL_H
#define RESIDENT_TESTS_INTEGRATION_HARNESS_MODEL_H

#include <stddef.h>
#include <stdint.h>

struct th_model {
    char    model_dir[512];     /* $RESIDENT_SOURCE_ROOT/tests/data/default-model */
    char    engine_exe[512];    /* $RESIDENT_BUILD_ROOT/engine/resident-engine */
    size_t  real_vocab;         /* the tokenizer's token count */
    int32_t im_end_id;          /* <|im_end|> */
};

/* Fill *m. Skips the test (exit 77, saying why) when resident-engine is not
 * built, io_uring is unavailable or the model's tokenizer does not load;
 * a missing <|im_end|> is a failed check. */
void th_model_require(struct th_model *m);

#endif
