/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Gateway metrics, rendered in the Prometheus text format (0.0.4) at
 * GET /metrics. One mutex guards everything: updates are a few per token
 * event, far below the cost of the event itself.
 */
#ifndef RESIDENT_CLIENT_OPENAI_METRICS_H
#define RESIDENT_CLIENT_OPENAI_METRICS_H

#include <stdint.h>

#include "client/openai/buf.h"

enum oai_endpoint {
    OAI_EP_CHAT, OAI_EP_COMPLETIONS, OAI_EP_MODELS, OAI_EP_HEALTH, OAI_EP_METRICS, OAI_EP_OTHER,
    OAI_EP_COUNT
};

/* Why a generation ended, as counted in resident_openai_finished_total. */
enum oai_outcome {
    OAI_OUT_STOP, OAI_OUT_LENGTH, OAI_OUT_TOOL_CALLS, OAI_OUT_CANCELLED, OAI_OUT_ERROR,
    OAI_OUT_COUNT
};

void oai_metrics_init(void);
void oai_metrics_request(enum oai_endpoint ep, unsigned status);
void oai_metrics_tokens(uint64_t prompt, uint64_t completion);
/* A finished generation's DONE.cached_tokens: prompt tokens residentd
 * restored from its prefix cache (0 = a miss, or the cache is off). */
void oai_metrics_prefix_cache(uint32_t cached_tokens);
void oai_metrics_ttft(double seconds);
/* @n tokens arrived @seconds after the previous event: n observations of seconds/n. */
void oai_metrics_itl(double seconds, uint32_t n);
void oai_metrics_e2e(double seconds);
void oai_metrics_finished(enum oai_outcome o);
void oai_metrics_disconnect(void);
/* Gauges: deltas of +1 / -1. */
void oai_metrics_running(int delta);
void oai_metrics_waiting(int delta);
void oai_metrics_sessions(int delta);
int oai_metrics_render(struct oai_buf *out);
/* Current value of resident_openai_requests_running (tests, health). */
int64_t oai_metrics_running_now(void);

#endif
