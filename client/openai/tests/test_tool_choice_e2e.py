# SPDX-License-Identifier: Apache-2.0
"""tool_choice "required" and named end to end: the official openai client ->
resident-openai -> residentd's engine generator on the bundled model
(tests/data/default-model: real architecture and tokenizer, random weights).

residentd forces the opening of the call, `<tool_call>\\n<function=NAME>\\n`,
by constrained decoding (daemon/force.c); what follows is the random model's
and is garbage. So these tests assert only what the constraint guarantees:
the first tool call carries the forced name (for "required": one of the
tools), nothing of the call leaks into content, the call's id and index
have the OpenAI shape, the forced tokens count as completion tokens, and
the stream and the non-streaming answer agree. The null generator's refusal
(400 on tool_choice) is in test_openai.py.
"""
import os

import openai
import pytest

from conftest import MODEL, MODEL_DIR, RESIDENTD, Gateway

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "search_web", "description": "Search the web",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}},
]
NAMES = {"get_weather", "search_web"}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
# With reasoning on, the constraint waits for the model's </think>, which
# random weights do not write: the forced call is tested with it off.
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}


def named(name):
    return {"type": "function", "function": {"name": name}}


@pytest.fixture(scope="module")
def engine_gw(tmp, model_daemon):
    if not os.path.isdir(MODEL_DIR):
        pytest.skip(f"no bundled model at {MODEL_DIR}")
    d = model_daemon(RESIDENTD, "engine", MODEL_DIR, start_timeout=60, stop_timeout=20)
    g = Gateway(tmp, d.sock, name="gw-engine")
    yield g
    g.stop()


def create(gw, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", MESSAGES)
    kw.setdefault("tools", TOOLS)
    kw.setdefault("max_tokens", 16)
    kw.setdefault("extra_body", NO_THINK)
    return gw.client().chat.completions.create(**kw)


def check_call(m, want):
    assert m.tool_calls, "the forced call is missing"
    tc = m.tool_calls[0]
    assert tc.type == "function" and tc.function.name in want
    assert tc.id.startswith("call_") and len(tc.id) == 29
    # The opening is forced right after the (closed) reasoning: no content
    # before the call, and no call markup anywhere in the content.
    assert not m.content or "<tool_call>" not in m.content
    return tc.function.name


@pytest.mark.parametrize("name", ["get_weather", "search_web"])
def test_named_nonstreaming(engine_gw, name):
    r = create(engine_gw, tool_choice=named(name), temperature=0)
    c = r.choices[0]
    assert check_call(c.message, {name}) == name
    # 7 forced ids of the opening + what the model wrote, all counted.
    assert r.usage.completion_tokens == 16
    assert c.finish_reason in ("length", "tool_calls")


def test_named_streaming_matches(engine_gw):
    ref = create(engine_gw, tool_choice=named("search_web"), temperature=0)
    stream = create(engine_gw, tool_choice=named("search_web"), temperature=0, stream=True,
                    stream_options={"include_usage": True})
    first, names, content, finish, usage = None, [], "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        content += ch.delta.content or ""
        for tc in ch.delta.tool_calls or []:
            if first is None:
                first = tc
            if tc.function and tc.function.name:
                names.append((tc.index, tc.function.name))
        finish = ch.finish_reason or finish
    assert first is not None and first.index == 0 and first.id.startswith("call_")
    assert first.function.name == "search_web"
    assert names[0] == (0, "search_web")
    assert [n for _, n in names] == [tc.function.name for tc in ref.choices[0].message.tool_calls]
    assert "<tool_call>" not in content
    assert finish == ref.choices[0].finish_reason
    assert usage.completion_tokens == ref.usage.completion_tokens == 16


def test_required_picks_a_tool(engine_gw):
    seen = set()
    for seed in range(1, 6):
        r = create(engine_gw, tool_choice="required", temperature=1.0, seed=seed, max_tokens=12)
        seen.add(check_call(r.choices[0].message, NAMES))
        assert r.usage.completion_tokens == 12
    assert seen <= NAMES


def test_named_seeded_is_reproducible(engine_gw):
    a = create(engine_gw, tool_choice=named("get_weather"), temperature=0.9, top_p=0.95, seed=11)
    b = create(engine_gw, tool_choice=named("get_weather"), temperature=0.9, top_p=0.95, seed=11)
    assert a.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert a.choices[0].message.tool_calls[0].function.arguments == \
        b.choices[0].message.tool_calls[0].function.arguments


def test_engine_refuses_bad_choices(engine_gw):
    with pytest.raises(openai.BadRequestError) as ei:
        create(engine_gw, tool_choice=named("get_time"))
    assert ei.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as ei:
        create(engine_gw, tool_choice="required", tools=openai.NOT_GIVEN)
    assert ei.value.body["param"] == "tool_choice"
    # "auto" and "none" keep their behaviour on the engine generator.
    for choice in ("auto", "none"):
        r = create(engine_gw, tool_choice=choice, temperature=0, max_tokens=4)
        assert r.usage.completion_tokens == 4
