# SPDX-License-Identifier: Apache-2.0
"""Sampling controls and prefix-cache metrics with a real model behind the
gateway: residentd runs the engine generator on the bundled model (random
weights, real tokenizer; its generation_config.json says "do_sample": false,
so unset fields mean greedy decoding).

- presence_penalty / frequency_penalty reach the engine's sampler: greedy
  output changes with them and repeats exactly without a seed;
- unset fields take the model's generation_config.json (applied by
  residentd), --generation-config FILE overrides it and the request
  overrides both;
- /metrics counts prefix-cache hits and cached prompt tokens as DONE
  reported them (usage.prompt_tokens_details.cached_tokens).
"""
import json
import os

import pytest

from conftest import MODEL, MODEL_DIR, RESIDENTD, Gateway

NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def engine_daemon(model_daemon):
    if not os.path.exists(os.path.join(MODEL_DIR, "model.safetensors")):
        pytest.skip(f"no bundled model at {MODEL_DIR}")
    return model_daemon(RESIDENTD, "engine", MODEL_DIR, start_timeout=60, stop_timeout=20).sock


@pytest.fixture(scope="module")
def egw(tmp, engine_daemon):
    g = Gateway(tmp, engine_daemon, name="gw-engine")
    yield g
    g.stop()


def reply(gw, text, **kw):
    """(content, reasoning) of a non-streamed chat turn."""
    kw.setdefault("max_tokens", 16)
    extra = dict(NO_THINK)
    extra.update(kw.pop("extra_body", {}))
    r = gw.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], extra_body=extra, **kw)
    m = r.choices[0].message
    return m.content, getattr(m, "reasoning_content", None)


def test_penalties_change_greedy_output(egw):
    changed = 0
    for text in ("Count to ten.", "Name a colour.", "Hello there"):
        plain = reply(egw, text, temperature=0)
        pen = reply(egw, text, temperature=0, presence_penalty=2.0, frequency_penalty=2.0)
        assert reply(egw, text, temperature=0, presence_penalty=2.0, frequency_penalty=2.0) == pen
        changed += pen != plain
    # Greedy output of random weights repeats tokens: penalties that change
    # none of three replies would not have reached the sampler.
    assert changed > 0


def test_unset_fields_take_model_defaults(egw, tmp):
    greedy = reply(egw, "Tell a story.", temperature=0)
    # Nothing set: the model's do_sample false = greedy, whatever the seed.
    assert reply(egw, "Tell a story.", seed=1) == greedy
    assert reply(egw, "Tell a story.", seed=2) == greedy
    # Explicit sampling does sample.
    assert reply(egw, "Tell a story.", temperature=1.0, seed=1) != \
        reply(egw, "Tell a story.", temperature=1.0, seed=2)

    # --generation-config overrides the model; the request overrides both.
    path = os.path.join(tmp, "override_generation_config.json")
    with open(path, "w") as f:
        json.dump({"temperature": 1.0, "top_k": 0}, f)
    g = Gateway(tmp, egw_sock(egw), "--generation-config", path, name="gw-engine-genconf")
    try:
        assert reply(g, "Tell a story.", seed=1) != reply(g, "Tell a story.", seed=2)
        assert reply(g, "Tell a story.", seed=1) == reply(egw, "Tell a story.", temperature=1.0, seed=1,
                                                         extra_body={"top_k": -1})
        assert reply(g, "Tell a story.", temperature=0, seed=2) == greedy
    finally:
        g.stop()


def egw_sock(gw):
    """The daemon socket a Gateway was started with."""
    args = gw.proc.args
    return args[args.index("--socket") + 1]


def test_prefix_cache_metrics(egw):
    before = egw.metrics()
    assert "resident_openai_prefix_cache_hits_total" in before
    assert "resident_openai_prefix_cache_cached_tokens_total" in before
    system = "You are a careful assistant. " * 40
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "First question?"}]
    cached = []
    for _ in range(3):
        r = egw.client().chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0,
                                                 extra_body=NO_THINK)
        d = r.usage.prompt_tokens_details
        cached.append(d.cached_tokens if d and d.cached_tokens else 0)
    assert cached[0] == 0 and cached[1] > 0 and cached[2] > 0, cached
    after = egw.metrics()
    assert after["resident_openai_prefix_cache_hits_total"] - before["resident_openai_prefix_cache_hits_total"] == \
        sum(1 for c in cached if c > 0)
    assert after["resident_openai_prefix_cache_cached_tokens_total"] - \
        before["resident_openai_prefix_cache_cached_tokens_total"] == sum(cached)
    status, _, body = egw.request("GET", "/metrics")
    text = body.decode()
    for name in ("resident_openai_prefix_cache_hits_total", "resident_openai_prefix_cache_cached_tokens_total"):
        assert f"# HELP {name} " in text and f"# TYPE {name} counter\n" in text
