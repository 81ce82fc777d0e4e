/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: arbitrary text as config.json and as
 * generation_config.json. An accepted config must satisfy the invariants
 * the forward pass relies on; a rejected one must leave a message.
 */
#include <stdint.h>
#include <stdlib.h>

#include "engine/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check(const struct model_config *c)
{
    if (c->num_hidden_layers < 1 || c->num_hidden_layers > MODEL_MAX_LAYERS)
        abort();
    if (c->num_experts_per_tok < 1 || c->num_experts_per_tok > c->num_experts)
        abort();
    if (c->num_key_value_heads && c->num_attention_heads % c->num_key_value_heads)
        abort();
    if (c->head_dim && (c->rotary_dim < 2 || c->rotary_dim > c->head_dim || c->rotary_dim % 2))
        abort();
    if (c->n_eos < 0 || c->n_eos > MODEL_MAX_EOS)
        abort();
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] < 0 || c->eos_token_ids[i] >= c->vocab_size)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    struct model_config cfg;
    struct engine_error err = { 0 };
    int rc = model_config_parse(text, size, "config.json", &cfg, &err);
    if (rc < 0 && err.msg[0] == '\0')
        abort();
    if (rc == 0) {
        fuzz_check(&cfg);
        engine_error_clear(&err);
        rc = model_config_parse_generation(text, size, "generation_config.json", &cfg, &err);
        if (rc < 0 && err.msg[0] == '\0')
            abort();
        fuzz_check(&cfg);
    }
    /* Generation config on its own (vocab unknown). */
    model_config_init(&cfg);
    engine_error_clear(&err);
    rc = model_config_parse_generation(text, size, "generation_config.json", &cfg, &err);
    if (rc < 0 && err.msg[0] == '\0')
        abort();
    return 0;
}
