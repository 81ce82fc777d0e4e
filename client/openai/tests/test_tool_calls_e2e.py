# SPDX-License-Identifier: Apache-2.0
"""Tool calls end to end: residentd's channels -> libresident -> gateway.

Uses the TEST daemon residentd-script (daemon/gen-script.c: a synthetic
generator that replays a fixed text through the real Qwen3 tokenizer of the
bundled model), because random weights never write a tool call. The text is
what Qwen3.6 writes for a call; residentd's output parsers turn it into
reasoning / content / tool-call events and the gateway into OpenAI chunks.
"""
import json
import os

import pytest

from conftest import BUILD, MODEL_DIR, Gateway

RESIDENTD_SCRIPT = os.path.join(BUILD, "daemon", "residentd-script")

SCRIPT = ("Let me check the weather.\n</think>\n\nChecking now.\n"
          "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
          "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>")

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}]

MESSAGES = [{"role": "user", "content": "Weather in Paris for 3 days?"}]


@pytest.fixture(scope="module")
def script_gw(tmp, model_daemon):
    if not os.access(RESIDENTD_SCRIPT, os.X_OK):
        pytest.skip(f"{RESIDENTD_SCRIPT} is not built")
    path = os.path.join(tmp, "script.txt")
    with open(path, "w") as f:
        f.write(SCRIPT)
    d = model_daemon(RESIDENTD_SCRIPT, "script", MODEL_DIR, env={"RESIDENT_GEN_SCRIPT": path},
                     start_timeout=20, stop_timeout=10)
    g = Gateway(tmp, d.sock, name="gw-script")
    yield g
    g.stop()


def test_tool_call_nonstreaming(script_gw):
    r = script_gw.client().chat.completions.create(
        model="Qwen/Qwen3.6-35B-A3B", messages=MESSAGES, tools=TOOLS, max_tokens=200)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    m = c.message
    assert m.content is not None and "Checking now." in m.content
    assert getattr(m, "reasoning", None) == "Let me check the weather.\n" or \
        getattr(m, "reasoning_content", None) == "Let me check the weather.\n"
    assert len(m.tool_calls) == 1
    tc = m.tool_calls[0]
    assert tc.type == "function" and tc.function.name == "get_weather"
    assert tc.id.startswith("call_") and len(tc.id) == 29
    assert json.loads(tc.function.arguments) == {"city": "Paris", "days": 3}


def test_tool_call_streaming(script_gw):
    stream = script_gw.client().chat.completions.create(
        model="Qwen/Qwen3.6-35B-A3B", messages=MESSAGES, tools=TOOLS, max_tokens=200, stream=True)
    calls, content, reasoning, finish = {}, "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        d = ch.delta
        content += d.content or ""
        reasoning += getattr(d, "reasoning", None) or getattr(d, "reasoning_content", None) or ""
        for tc in d.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            if tc.id:
                c["id"] = tc.id
            if tc.function and tc.function.name:
                c["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                c["args"] += tc.function.arguments
        finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert reasoning == "Let me check the weather.\n"
    assert "Checking now." in content and "<tool_call>" not in content
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["args"]) == {"city": "Paris", "days": 3}


def test_tool_choice_none_is_content(script_gw):
    # tool_choice "none": no tools in the prompt, no tool parser: the text is content.
    r = script_gw.client().chat.completions.create(
        model="Qwen/Qwen3.6-35B-A3B", messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=200)
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert not c.message.tool_calls
    assert "<tool_call>" in c.message.content
