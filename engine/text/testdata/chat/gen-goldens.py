#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Generate chat-template goldens for engine/text/test-template.c.

Renders the official Qwen3.6 chat_template.jinja with jinja2 set up the way
transformers' apply_chat_template does (ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, tojson = json.dumps(ensure_ascii=
False), raise_exception), after preparing each request the way vLLM does
(tool dicts re-shaped like ChatCompletionToolsParam.model_dump(), tool-call
argument strings json.loads'ed, falsy arguments -> {}).

Usage: .venv-tpl/bin/python engine/text/testdata/chat/gen-goldens.py \
           ../shared/models/qwen3.6-tokenizer/chat_template.jinja > goldens.json
Each record: {"name", "request", "rendered"} or {"name", "request",
"error", "error_kind": "template" | "other"}.
"""
import copy
import json
import random
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateRaise(Exception):
    pass


def raise_exception(message):
    raise TemplateRaise(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def dump_tool(t):
    f = t["function"]
    fn = {"name": f["name"], "description": f.get("description"), "parameters": f.get("parameters")}
    for k, v in f.items():
        if k not in fn:
            fn[k] = v
    out = {"type": t.get("type", "function"), "function": fn}
    for k, v in t.items():
        if k not in out:
            out[k] = v
    return out


def vllm_prep(req):
    msgs = copy.deepcopy(req["messages"])
    for m in msgs:
        if isinstance(m, dict) and m.get("tool_calls") and isinstance(m["tool_calls"], list):
            for tc in m["tool_calls"]:
                if isinstance(tc, dict) and isinstance(tc.get("function"), dict):
                    a = tc["function"].get("arguments")
                    if a:
                        if not isinstance(a, (dict, list)):
                            tc["function"]["arguments"] = json.loads(a)
                    else:
                        tc["function"]["arguments"] = {}
    tools = req.get("tools")
    if tools:
        tools = [dump_tool(t) for t in tools]
    return msgs, tools


def render(tmpl, req):
    msgs, tools = vllm_prep(req)
    kw = dict(req.get("chat_template_kwargs") or {})
    return tmpl.render(messages=msgs, tools=tools,
                       add_generation_prompt=req.get("add_generation_prompt", True),
                       bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", **kw)


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                          "required": ["city"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Web search",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}},
                         "required": ["query"]}}}


def call(name, args, as_string=False):
    return {"id": "call_1", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args) if as_string else args}}


U = lambda c: {"role": "user", "content": c}
A = lambda c, **kw: dict({"role": "assistant", "content": c}, **kw)
S = lambda c: {"role": "system", "content": c}
T = lambda c: {"role": "tool", "tool_call_id": "call_1", "content": c}

CASES = [
    # The twelve conversations of rendered_examples.json, rebuilt from its descriptions.
    ("a_user", {"messages": [U("What is 2+2?")], "add_generation_prompt": True}),
    ("a_user_nothink", {"messages": [U("What is 2+2?")], "add_generation_prompt": True,
                        "chat_template_kwargs": {"enable_thinking": False}}),
    ("b_sys_tools", {"messages": [S("You are a helpful assistant."), U("Weather in Paris?")],
                     "tools": [WEATHER, SEARCH], "add_generation_prompt": True}),
    ("b_tools_nosys", {"messages": [U("Weather in Paris?")], "tools": [WEATHER], "add_generation_prompt": True}),
    ("c_toolcall_pending", {"messages": [U("Weather in Paris?"),
                                         A("", reasoning_content="Need the weather tool.",
                                           tool_calls=[call("get_weather", {"city": "Paris", "unit": "celsius"})]),
                                         T("{\"temp_c\": 18, \"sky\": \"cloudy\"}")], "add_generation_prompt": True}),
    ("c_toolcall_final", {"messages": [U("Weather in Paris?"),
                                       A("", reasoning_content="Need the weather tool.",
                                         tool_calls=[call("get_weather", {"city": "Paris", "unit": "celsius"})]),
                                       T("{\"temp_c\": 18, \"sky\": \"cloudy\"}"),
                                       A("It is 18 °C and cloudy in Paris.", reasoning_content="Report it.")],
                          "add_generation_prompt": False}),
    ("c_two_calls_two_results", {"messages": [U("Weather in Paris and Rome?"),
                                              A("Checking both.", tool_calls=[
                                                  call("get_weather", {"city": "Paris"}),
                                                  call("get_weather", {"city": "Rome", "days": 3, "flags": ["a", "b"],
                                                                       "opt": None, "ok": True})]),
                                              T("18C"), T("25C")], "add_generation_prompt": True}),
    ("d_multiturn", {"messages": [U("Hi"), A("Hello! How can I help?", reasoning_content="Greet back."),
                                  U("Tell me a joke.")], "add_generation_prompt": True}),
    ("d_multiturn_preserve", {"messages": [U("Hi"), A("Hello! How can I help?", reasoning_content="Greet back."),
                                           U("Tell me a joke.")], "add_generation_prompt": True,
                              "chat_template_kwargs": {"preserve_thinking": True}}),
    ("d_inline_think_in_content", {"messages": [U("Hi"), A("<think>\nGreet back.\n</think>\n\nHello!"), U("Bye")],
                                   "add_generation_prompt": True}),
    ("b_tool_missing_description_vllm_dump", {"messages": [U("hi")],
                                              "tools": [{"type": "function", "function": {"name": "ping"}}],
                                              "add_generation_prompt": True}),
    # Further cases.
    ("sys_only_no_tools", {"messages": [S("  Be brief.\n"), U("x")]}),
    ("sys_empty_with_tools", {"messages": [S("   "), U("x")], "tools": [WEATHER]}),
    ("sys_parts", {"messages": [S([{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]), U("x")]}),
    ("user_parts_vision", {"messages": [U([{"type": "text", "text": "Look: "}, {"type": "image", "image": "a.png"},
                                           {"type": "image_url", "image_url": {"url": "b"}}, {"type": "video", "video": "v"},
                                           {"type": "text", "text": " done"}])]}),
    ("user_parts_vision_ids", {"messages": [U([{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]),
                                            A("ok"), U([{"type": "video"}, {"type": "image"}])],
                               "chat_template_kwargs": {"add_vision_id": True}}),
    ("unicode_trim", {"messages": [U("\u3000\u00a0 hello\u2028\u2003"), A("\u1680answer\u205f")]}),
    ("no_gen_prompt", {"messages": [U("x"), A("y")], "add_generation_prompt": False}),
    ("enable_thinking_string_false", {"messages": [U("x")], "chat_template_kwargs": {"enable_thinking": "false"}}),
    ("enable_thinking_true", {"messages": [U("x")], "chat_template_kwargs": {"enable_thinking": True}}),
    ("preserve_thinking_one", {"messages": [U("a"), A("b", reasoning_content="r"), U("c")],
                               "chat_template_kwargs": {"preserve_thinking": 1}}),
    ("tool_json_details", {"messages": [U("x")], "tools": [
        {"type": "function", "function": {"name": "f", "description": "Ünïcödé \"quoted\" back\\slash / tab\t nl\n ctl\u0001 ls\u2028",
                                          "parameters": {"type": "object", "properties": {
                                              "a": {"type": "number", "minimum": 1.0, "maximum": 1e16, "step": 1e-05,
                                                    "x": 0.1, "y": -2.5e-7, "z": 123456789.125, "w": 1.5e300},
                                              "b": {"type": "integer", "default": 12345678901234567890123, "neg": -7},
                                              "c": {"type": "boolean", "default": False},
                                              "d": {"type": "array", "items": {"type": "string"}, "default": []},
                                              "e": {"type": "object", "default": {}}}},
                                          "strict": True}, "extra_top": [1, 2]}]}),
    ("tool_no_params", {"messages": [U("x")], "tools": [{"function": {"name": "now", "description": "time"}}]}),
    ("args_as_string", {"messages": [U("q"), A("", tool_calls=[call("search", {"query": "x y", "max_results": 5}, True)]),
                                     T("r")]}),
    ("args_empty_string", {"messages": [U("q"), A("", tool_calls=[{"type": "function",
                                                                   "function": {"name": "now", "arguments": ""}}])]}),
    ("args_null", {"messages": [U("q"), A(None, tool_calls=[{"type": "function",
                                                             "function": {"name": "now", "arguments": None}}])]}),
    ("args_values", {"messages": [U("q"), A("  \n", tool_calls=[call("f", {
        "s": "multi\nline", "i": -3, "f": 2.0, "g": 0.5, "big": 100000000000000000000000, "l": [1, "two", None],
        "o": {"k": "v", "n": {"x": [True, False]}}, "u": "é ☃", "e": ""})])]}),
    ("call_without_function_wrapper", {"messages": [U("q"), A("text", tool_calls=[{"name": "f", "arguments": {"a": "b"}}])]}),
    ("assistant_content_none", {"messages": [U("q"), A(None), U("again")]}),
    ("inline_think_after_query", {"messages": [U("q"), A("<think>\n\nplan\n\n</think>\n\n\nanswer")]}),
    ("inline_think_multiple", {"messages": [U("q"), A("a<think>x</think>b<think>y</think>\nc")]}),
    ("inline_close_only", {"messages": [U("q"), A("just reasoning\n</think>\n\nfinal")]}),
    ("reasoning_content_overrides_inline", {"messages": [U("q"), A("<think>in</think>out", reasoning_content=" rc ")]}),
    ("reasoning_content_non_string", {"messages": [U("q"), A("<think>in</think>out", reasoning_content=None)]}),
    ("multistep_tools", {"messages": [U("q"),
                                      A("", reasoning_content="r1", tool_calls=[call("f", {"a": 1})]), T("o1"),
                                      A("mid", reasoning_content="r2", tool_calls=[call("g", {"b": "x"}), call("h", {})]),
                                      T("o2"), T("o3")], "tools": [WEATHER]}),
    ("tool_response_user_not_query", {"messages": [U("real"), A("a", reasoning_content="kept"),
                                                   U("<tool_response>\nfake\n</tool_response>")]}),
    ("tool_first", {"messages": [T("orphan"), U("q")]}),
    ("tool_after_user", {"messages": [U("q"), T("t1"), T("t2"), U("q2")]}),
    ("preserve_with_calls", {"messages": [U("q"), A("c", reasoning_content="r", tool_calls=[call("f", {"x": 1})]),
                                          T("o"), U("q2")], "chat_template_kwargs": {"preserve_thinking": True}}),
    ("user_content_null", {"messages": [U(None)]}),
    ("string_part_items", {"messages": [U(["some text", "an image here", "video!"])]}),
    ("text_part_non_string", {"messages": [U([{"type": "text", "text": 42}, {"type": "text", "text": None},
                                              {"type": "text", "text": 1.5}, {"type": "text", "text": True}])]}),
    # Errors.
    ("err_no_messages", {"messages": []}),
    ("err_system_not_first", {"messages": [U("q"), S("late")]}),
    ("err_no_user_query", {"messages": [A("hello")]}),
    ("err_only_tool_response_users", {"messages": [U("<tool_response>x</tool_response>")]}),
    ("err_unexpected_role", {"messages": [U("q"), {"role": "developer", "content": "x"}]}),
    ("err_content_type", {"messages": [U(5)]}),
    ("err_content_mapping", {"messages": [U({"text": "x"})]}),
    ("err_item_type", {"messages": [U([{"type": "audio", "audio": "x"}])]}),
    ("err_item_string", {"messages": [U(["plain words"])]}),
    ("err_system_image_tools", {"messages": [S([{"type": "image"}]), U("q")], "tools": [WEATHER]}),
    ("err_system_video_notools", {"messages": [S([{"type": "video"}]), U("q")]}),
    ("err_call_no_name", {"messages": [U("q"), A("", tool_calls=[{"function": {"arguments": {}}}])]}),
    ("err_args_list", {"messages": [U("q"), A("", tool_calls=[{"function": {"name": "f", "arguments": "[1]"}}])]}),
]


# Random conversations (fixed seed): strings built from template-relevant
# atoms (think tags, tool_response wrappers, Unicode whitespace), random
# roles, parts, tool calls with argument values of every JSON type, random
# kwargs. Locks in the differential check against jinja2.
RANDOM_SEED = 7
RANDOM_COUNT = 150
R = random.Random(RANDOM_SEED)
atoms = ["", " ", "\n", "\t", "hi", "Hello, world", "<think>", "</think>", "\n\n", "<tool_call>", "<tool_response>", "</tool_response>",
         "\u3000", "\xa0", "é", "☃", "\u2028", "x\ny", "  pad  ", "<|im_end|>", "\\", "\"", "{}", "\x1c", "\x85"]
def s(): return "".join(R.choice(atoms) for _ in range(R.randint(0, 5)))
def val(d=0):
    k = R.randint(0, 9 if d < 2 else 5)
    alts = [s, lambda: R.randint(-5, 10**R.randint(0, 25)), lambda: R.choice([0.5, 1.0, 1e16, 1e-7, -2.5, 123.456, 1e300]),
            lambda: True, lambda: False, lambda: None,
            lambda: [val(d+1) for _ in range(R.randint(0, 3))], lambda: {s() or "k": val(d+1) for _ in range(R.randint(0, 3))}, s, s]
    return alts[k]()
def content():
    k = R.randint(0, 9)
    if k < 6: return s()
    if k == 6: return None
    parts = []
    for _ in range(R.randint(0, 3)):
        t = R.randint(0, 4)
        parts.append({"type": "text", "text": s()} if t < 3 else ({"type": "image"} if t == 3 else {"type": "video", "video": "v"}))
    return parts
def call():
    args = {R.choice(["a", "b", "city", "q", "é"]): val() for _ in range(R.randint(0, 3))}
    if R.random() < 0.3: args = json.dumps(args)
    c = {"type": "function", "function": {"name": R.choice(["f", "get_weather", "x.y"]), "arguments": args}}
    return c
def msg():
    role = R.choice(["user", "user", "assistant", "assistant", "tool", "system"])
    m = {"role": role, "content": content()}
    if role == "assistant":
        if R.random() < 0.4: m["reasoning_content"] = R.choice([s(), None])
        if R.random() < 0.4: m["tool_calls"] = [call() for _ in range(R.randint(1, 3))]
    return m
def tool():
    f = {"name": R.choice(["f", "get_weather"])}
    if R.random() < 0.7: f["description"] = s()
    if R.random() < 0.7: f["parameters"] = {"type": "object", "properties": {"a": {"type": R.choice(["string", "integer"]), "default": val()}}}
    if R.random() < 0.2: f["strict"] = True
    t = {"type": "function", "function": f}
    return t


def random_cases():
    for i in range(RANDOM_COUNT):
        msgs = [msg() for _ in range(R.randint(1, 6))]
        if R.random() < 0.5:
            msgs.insert(R.randint(0, len(msgs)), {"role": "user", "content": s() + "q"})
        req = {"messages": msgs}
        if R.random() < 0.4:
            req["tools"] = [tool() for _ in range(R.randint(1, 2))]
        kw = {}
        if R.random() < 0.3:
            kw["enable_thinking"] = R.choice([True, False, "false", 0])
        if R.random() < 0.3:
            kw["preserve_thinking"] = R.choice([True, False, 1])
        if R.random() < 0.2:
            kw["add_vision_id"] = R.choice([True, False])
        if kw:
            req["chat_template_kwargs"] = kw
        if R.random() < 0.7:
            req["add_generation_prompt"] = R.choice([True, False])
        yield ("random_%03d" % i, req)


def main():
    src = open(sys.argv[1], encoding="utf-8").read()
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    tmpl = env.from_string(src)
    out = []
    for name, req in CASES + list(random_cases()):
        rec = {"name": name, "request": req}
        try:
            rec["rendered"] = render(tmpl, req)
        except TemplateRaise as e:
            rec["error"] = str(e)
            rec["error_kind"] = "template"
        except Exception as e:  # Jinja/Python type errors: the C side rejects, message differs
            rec["error"] = "%s: %s" % (type(e).__name__, e)
            rec["error_kind"] = "other"
        out.append(rec)
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
