# SPDX-License-Identifier: Apache-2.0
"""resident-openai end to end with the official openai client.

residentd runs the null generator: deterministic synthetic tokens, no
model. So these tests prove the HTTP/SSE/OpenAI plumbing, usage, stops,
errors, limits and cancellation; reasoning and tool-call output cannot come
from the null generator and is proven by client/openai/test-stream.c.
"""
import json
import os
import re
import subprocess
import threading
import time

import openai
import pytest

from conftest import MAX_NEW_TOKENS, MODEL

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]


def chat(gw, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", MSGS)
    return gw.client().chat.completions.create(**kw)


def stream_text(gw, **kw):
    """(content, finish_reason, usage, chunks) of a streamed chat."""
    chunks = list(chat(gw, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    return text, finish, usage, chunks


# ---- endpoints ----

def test_models(gw):
    models = gw.client().models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL]
    status, _, body = gw.request("GET", "/v1/models")
    m = json.loads(body)["data"][0]
    assert status == 200 and m["object"] == "model" and m["owned_by"] == "resident"
    assert gw.client().models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        gw.client().models.retrieve("gpt-4o")


def test_health(gw):
    status, headers, body = gw.request("GET", "/health")
    assert status == 200
    j = json.loads(body)
    assert j["status"] == "ok"
    assert j["generator"] == "null" and j["synthetic"] is True


def test_first_request_labels_the_generator(make_gateway):
    """A fresh gateway knows the generator from the session the request
    itself opened: the very first answer is already labelled."""
    g = make_gateway(name="fresh")
    r = chat(g, max_tokens=2)
    assert r.system_fingerprint == "resident-null"
    status, headers, _ = g.request("POST", "/v1/chat/completions", {"messages": MSGS, "max_tokens": 2})
    assert status == 200 and headers["X-Resident-Generator"] == "null"


def test_health_and_requests_without_daemon(make_gateway, tmp):
    g = make_gateway(sock=os.path.join(tmp, "no-such-daemon.sock"))
    status, _, body = g.request("GET", "/health")
    assert status == 503
    assert "residentd" in json.loads(body)["error"]["message"]
    with pytest.raises(openai.InternalServerError) as ei:
        chat(g, max_tokens=4)
    assert ei.value.status_code == 503
    assert ei.value.body["code"] == "service_unavailable"


def test_chat_nonstreaming(gw):
    r = chat(gw, max_tokens=8, seed=7)
    c = r.choices[0]
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content
    assert c.finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.system_fingerprint == "resident-null"
    # The null generator is a function of (prompt, seed): same request, same text.
    assert chat(gw, max_tokens=8, seed=7).choices[0].message.content == c.message.content


def test_chat_streaming_matches_nonstreaming(gw):
    ref = chat(gw, max_tokens=24, seed=11)
    text, finish, usage, chunks = stream_text(gw, max_tokens=24, seed=11, stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert text == ref.choices[0].message.content
    assert finish == ["length"]
    assert len(usage) == 1 and usage[0].completion_tokens == 24
    assert usage[0].prompt_tokens == ref.usage.prompt_tokens
    assert chunks[-1].choices == []         # the usage chunk comes last


def test_streaming_without_usage(gw):
    _, finish, usage, _ = stream_text(gw, max_tokens=3, seed=1)
    assert finish == ["length"] and usage == []


def test_stop_sequence(gw):
    ref = chat(gw, max_tokens=40, seed=5).choices[0].message.content
    words = [w for w in ref.split(" ") if len(w) >= 3 and ref.index(w) > 0]
    assert words, ref
    stop = words[len(words) // 2]
    cut = ref[:ref.index(stop)]
    r = chat(gw, max_tokens=40, seed=5, stop=[stop, "never-appears-zz"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == cut
    text, finish, _, _ = stream_text(gw, max_tokens=40, seed=5, stop=stop)
    assert finish == ["stop"] and text == cut


def test_sampling_fields_and_template_kwargs_accepted(gw):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "reasoning_content": "Need the tool.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"},
    ]
    for choice in ("auto", "none"):
        r = chat(gw, messages=history, tools=tools, tool_choice=choice, max_completion_tokens=5,
                 temperature=0.6, top_p=0.95, seed=3, presence_penalty=0, frequency_penalty=0,
                 extra_body={"top_k": 20, "min_p": 0.0, "repetition_penalty": 1.0,
                             "chat_template_kwargs": {"enable_thinking": False, "preserve_thinking": True}})
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_completions(gw):
    c = gw.client()
    r = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, seed=2)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    chunks = list(c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, seed=2, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
    assert [ch.usage.completion_tokens for ch in chunks if ch.usage] == [6]
    ids = c.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=2)
    assert ids.usage.prompt_tokens == 4


# ---- errors ----

def error_of(status_body):
    status, _, body = status_body
    e = json.loads(body)["error"]
    assert set(e) == {"message", "type", "param", "code"}
    return status, e


def test_malformed_json(gw):
    status, e = error_of(gw.request("POST", "/v1/chat/completions", "{\"model\": ",
                                    {"Content-Type": "application/json"}))
    assert status == 400 and e["type"] == "invalid_request_error"
    status, e = error_of(gw.request("POST", "/v1/chat/completions", "[]"))
    assert status == 400


def test_wrong_types(gw):
    with pytest.raises(openai.BadRequestError) as ei:
        chat(gw, temperature="hot")
    assert ei.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as ei:
        chat(gw, messages="hello")
    assert ei.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        chat(gw, messages=[{"role": "user", "content": 5}])


def test_unknown_model(gw):
    with pytest.raises(openai.NotFoundError) as ei:
        chat(gw, model="gpt-4o", max_tokens=2)
    assert ei.value.status_code == 404 and ei.value.body["code"] == "model_not_found"


def test_prompt_longer_than_context(gw):
    long_msg = [{"role": "user", "content": "word " * 4000}]
    with pytest.raises(openai.BadRequestError) as ei:
        chat(gw, messages=long_msg, max_tokens=2)
    assert ei.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as ei:  # streaming requests get the status too
        list(chat(gw, messages=long_msg, max_tokens=2, stream=True))
    assert ei.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("kw,param", [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"max_tokens": MAX_NEW_TOKENS + 1}, "max_tokens"),
    ({"stop": [""]}, "stop"),
    ({"top_p": 0}, "top_p"),
])
def test_invalid_parameters(gw, kw, param):
    with pytest.raises(openai.BadRequestError) as ei:
        chat(gw, **kw)
    assert ei.value.status_code == 400
    assert ei.value.body["param"] == param, ei.value.body


def test_penalties_accepted_and_range_checked(gw):
    """presence/frequency penalties are passed through (test_sampling_e2e.py
    shows their effect on a model); outside OpenAI's -2..2 they are a 400."""
    r = chat(gw, max_tokens=3, presence_penalty=1.5, frequency_penalty=-0.5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    for kw, param in (({"frequency_penalty": -2.5}, "frequency_penalty"),
                      ({"presence_penalty": "high"}, "presence_penalty")):
        with pytest.raises(openai.BadRequestError) as ei:
            chat(gw, **kw)
        assert ei.value.body["param"] == param, ei.value.body


def test_tool_choice_needs_the_capability(gw):
    # The null generator does not advertise SHM_WELCOME_F_TOOL_CHOICE: forced
    # calls are refused before submission, streaming or not; "auto" still
    # works. (The engine generator: test_tool_choice_e2e.py.)
    tools = [{"type": "function", "function": {"name": "f"}}]
    for choice in ("required", {"type": "function", "function": {"name": "f"}}):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as ei:
                r = chat(gw, tools=tools, tool_choice=choice, max_tokens=2, stream=stream)
                if stream:
                    list(r)
            assert ei.value.body["param"] == "tool_choice"
            assert "SHM_WELCOME_F_TOOL_CHOICE" in ei.value.body["message"]
    r = chat(gw, tools=tools, tool_choice="auto", max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_body_too_large(gw):
    status, e = error_of(gw.request("POST", "/v1/chat/completions", "x" * 70000))
    assert status == 413
    with pytest.raises(openai.APIStatusError) as ei:
        chat(gw, messages=[{"role": "user", "content": "y" * 70000}])
    assert ei.value.status_code == 413


def test_routes_and_methods(gw):
    assert error_of(gw.request("GET", "/v1/nothing"))[0] == 404
    assert error_of(gw.request("GET", "/v1/chat/completions"))[0] == 405
    assert error_of(gw.request("POST", "/v1/models", "{}"))[0] == 405


def test_too_many_concurrent(make_gateway):
    g = make_gateway("--max-concurrent", "1")
    held = g.client().chat.completions.create(model=MODEL, messages=MSGS, stream=True, max_tokens=MAX_NEW_TOKENS)
    first = next(iter(held))
    assert first.choices[0].delta.role == "assistant"
    with pytest.raises(openai.RateLimitError) as ei:
        chat(g, max_tokens=2)
    assert ei.value.status_code == 429
    held.close()
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            chat(g, max_tokens=2)
            break
        except openai.RateLimitError:
            time.sleep(0.05)
    else:
        pytest.fail("the slot was not freed after the client closed its stream")
    # A finished request gives its slot back before its answer is sent:
    # back-to-back requests at the limit are never refused.
    for i in range(20):
        if i % 2:
            assert chat(g, max_tokens=2).usage.completion_tokens == 2
        else:
            assert stream_text(g, max_tokens=2)[1] == ["length"]


def test_auth(make_gateway, tmp):
    key = os.path.join(tmp, "key")
    with open(key, "w") as f:
        f.write("s3cret-key\n")
    os.chmod(key, 0o600)
    g = make_gateway("--api-key-file", key)
    with pytest.raises(openai.AuthenticationError):
        g.client(api_key="wrong").chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        g.client(api_key="s3cret-ke").models.list()
    r = g.client(api_key="s3cret-key").chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
    assert r.usage.completion_tokens == 2
    # The Unix socket relies on its file permissions: no key needed.
    status, _, body = g.request("POST", "/v1/chat/completions",
                                {"model": MODEL, "messages": MSGS, "max_tokens": 2}, unix=True)
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2
    assert g.request("GET", "/health")[0] == 200      # probes stay open


# ---- concurrency, metrics, cancellation ----

def test_concurrent_streams(gw):
    results, errors = {}, []

    def run(seed):
        try:
            results[seed] = stream_text(gw, max_tokens=200, seed=seed, stream_options={"include_usage": True})
        except Exception as ex:  # noqa: BLE001 - reported below
            errors.append(ex)
    threads = [threading.Thread(target=run, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for seed, (text, finish, usage, _) in results.items():
        assert finish == ["length"] and usage[0].completion_tokens == 200
        assert text == chat(gw, max_tokens=200, seed=seed).choices[0].message.content
    assert len({r[0] for r in results.values()}) == 6


def test_metrics(gw):
    # 200 tokens arrive in several events, so inter-token gaps get observed.
    assert chat(gw, max_tokens=200).usage.completion_tokens == 200
    m = gw.metrics()
    assert m['resident_openai_requests_total{endpoint="chat_completions",code="2xx"}'] >= 1
    assert m["resident_openai_generation_tokens_total"] >= 200
    assert m["resident_openai_prompt_tokens_total"] > 0
    assert m["resident_openai_time_to_first_token_seconds_count"] >= 1
    assert m["resident_openai_inter_token_latency_seconds_count"] >= 1
    assert m['resident_openai_time_to_first_token_seconds_bucket{le="+Inf"}'] == \
        m["resident_openai_time_to_first_token_seconds_count"]
    assert m["resident_openai_requests_running"] == 0
    assert m["resident_openai_queue_depth"] == 0
    assert m["resident_openai_daemon_sessions"] >= 1
    assert m['resident_openai_finished_total{reason="length"}'] >= 1
    # The null generator has no prefix cache: the counters exist and stay 0
    # (test_sampling_e2e.py counts real hits).
    assert m["resident_openai_prefix_cache_hits_total"] == 0
    assert m["resident_openai_prefix_cache_cached_tokens_total"] == 0
    status, headers, body = gw.request("GET", "/metrics")
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE resident_openai_prefix_cache_hits_total counter\n" in body


def test_disconnect_cancels_generation(gw):
    before = gw.metrics()
    stream = gw.client().chat.completions.create(model=MODEL, messages=MSGS, stream=True,
                                                 max_tokens=MAX_NEW_TOKENS, seed=9)
    it = iter(stream)
    next(it)
    next(it)
    assert gw.metrics()["resident_openai_requests_running"] == 1
    t0 = time.time()
    stream.close()          # hang up mid-stream
    deadline = t0 + 5
    while time.time() < deadline:
        m = gw.metrics()
        if m["resident_openai_requests_running"] == 0:
            break
        time.sleep(0.02)
    took = time.time() - t0
    assert m["resident_openai_requests_running"] == 0, "the generation was not cancelled"
    # residentd answered the cancel with DONE(cancelled) long before the
    # million tokens it was asked for: the daemon's sequence is gone.
    assert m['resident_openai_finished_total{reason="cancelled"}'] == \
        before['resident_openai_finished_total{reason="cancelled"}'] + 1
    assert m["resident_openai_client_disconnects_total"] == before["resident_openai_client_disconnects_total"] + 1
    assert m["resident_openai_generation_tokens_total"] - before["resident_openai_generation_tokens_total"] < \
        MAX_NEW_TOKENS
    assert took < 2.0
    # And the gateway still serves.
    assert chat(gw, max_tokens=2).usage.completion_tokens == 2


def test_daemon_shutdown_mid_stream(make_gateway, tmp):
    """residentd stops while a stream is open: the client gets an SSE error
    event (the openai client raises APIError on it), then [DONE]."""
    import http.client
    from conftest import Daemon
    sub = os.path.join(tmp, "shutdown")     # its own daemon, socket and log
    os.makedirs(sub, exist_ok=True)
    d = Daemon(sub)
    try:
        g = make_gateway(sock=d.sock, name="shut")
        conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": MODEL, "messages": MSGS, "stream": True, "max_tokens": MAX_NEW_TOKENS}))
        r = conn.getresponse()
        assert r.status == 200
        assert r.read1(4096).startswith(b"data: ")
        d.stop()
        rest = r.read().decode()    # raw: a megabyte of chunks parses slowly in pydantic
        conn.close()
        events = rest.split("\n\n")
        assert events[-1] == "" and events[-2] == "data: [DONE]"
        err = json.loads(events[-3][len("data: "):])["error"]
        assert err["type"] == "server_error" and "residentd" in err["message"]
        assert g.request("GET", "/health")[0] == 503
    finally:
        d.stop()


# ---- raw framing with curl ----

def curl(gw, *args):
    r = subprocess.run(["curl", "-sS", "-N", "--max-time", "30", *args], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def test_curl_sse_framing(gw):
    body = json.dumps({"model": MODEL, "messages": MSGS, "max_tokens": 5, "seed": 4, "stream": True,
                       "stream_options": {"include_usage": True}})
    out = curl(gw, "-i", "-H", "Content-Type: application/json", "-d", body,
               f"http://127.0.0.1:{gw.port}/v1/chat/completions")
    head, _, sse = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    assert re.search(r"(?im)^content-type: text/event-stream", head)
    assert re.search(r"(?im)^transfer-encoding: chunked", head)
    assert sse.endswith("data: [DONE]\n\n")
    events = sse.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"
    assert payloads[-1]["usage"]["completion_tokens"] == 5
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p["choices"])
    assert text == chat(gw, max_tokens=5, seed=4).choices[0].message.content


def test_curl_errors_and_unix_socket(gw):
    out = curl(gw, "-w", "\n%{http_code}", "-d", "{bad", f"http://127.0.0.1:{gw.port}/v1/chat/completions")
    body, code = out.rsplit("\n", 1)
    assert code == "400" and json.loads(body)["error"]["type"] == "invalid_request_error"
    out = curl(gw, "--unix-socket", gw.unix, "-d",
               json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 3, "stream": True}),
               "http://localhost/v1/completions")
    assert out.endswith("data: [DONE]\n\n")
    assert '"finish_reason":"length"' in out


def test_socket_activation(daemon, tmp):
    """systemd passes the listening socket (LISTEN_FDS): served through
    MHD_OPTION_LISTEN_SOCKET, and a passed non-loopback socket is refused."""
    import shutil
    import socket
    from conftest import GATEWAY
    activate = shutil.which("systemd-socket-activate")
    if not activate:
        pytest.skip("systemd-socket-activate is not installed")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = open(os.path.join(tmp, "activated.log"), "w+")
    p = subprocess.Popen([activate, "-l", f"127.0.0.1:{port}", GATEWAY, "--socket", daemon.sock],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        import http.client
        deadline = time.time() + 10
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/health")
                r = conn.getresponse()
                break
            except OSError:
                if time.time() > deadline or p.poll() is not None:
                    log.seek(0)
                    pytest.fail("activated gateway did not answer: " + log.read())
                time.sleep(0.05)
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        conn.close()
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3).usage.completion_tokens == 3
    finally:
        p.terminate()
        p.wait(10)
        log.close()
    # 0.0.0.0 is not loopback: the gateway must refuse the passed socket.
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen([activate, "-l", f"0.0.0.0:{port}", GATEWAY, "--socket", daemon.sock],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 10
        while p.poll() is None and time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                pass
            time.sleep(0.05)
        out = p.communicate(timeout=10)[0]
        assert p.returncode != 0 and "not on loopback" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_refuses_non_loopback_listen(daemon):
    from conftest import GATEWAY
    r = subprocess.run([GATEWAY, "--socket", daemon.sock, "--listen", "0.0.0.0:0"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0 and "not a loopback address" in r.stderr


def test_gateway_sigterm_with_open_stream(make_gateway):
    """SIGTERM while a client streams: the generation is cancelled in
    residentd, the stream ends with an error event and [DONE], and the
    gateway exits 0 (the fixture checks the status)."""
    import http.client
    g = make_gateway(name="term")
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": MSGS, "stream": True, "max_tokens": MAX_NEW_TOKENS}))
    r = conn.getresponse()
    assert r.status == 200 and r.read1(4096).startswith(b"data: ")
    t0 = time.time()
    g.proc.send_signal(15)
    rest = r.read().decode()
    conn.close()
    assert rest.endswith("data: [DONE]\n\n")
    assert '"error"' in rest.rsplit("\n\n", 3)[-3]
    g.proc.wait(15)
    assert g.proc.returncode == 0
    assert time.time() - t0 < 5


def test_generation_config_option(make_gateway, daemon, tmp):
    """--generation-config: a valid generation_config.json is accepted (its
    values become the defaults; request.c's unit test checks how), a broken
    one stops the gateway at start with the field named."""
    from conftest import GATEWAY
    good = os.path.join(tmp, "generation_config.json")
    with open(good, "w") as f:
        json.dump({"bos_token_id": 248044, "do_sample": True, "eos_token_id": [248046, 248044],
                   "pad_token_id": 248044, "temperature": 1.0, "top_k": 20, "top_p": 0.95}, f)
    g = make_gateway("--generation-config", good, name="genconf")
    assert chat(g, max_tokens=2).usage.completion_tokens == 2
    bad = os.path.join(tmp, "bad_generation_config.json")
    with open(bad, "w") as f:
        json.dump({"top_p": "high"}, f)
    r = subprocess.run([GATEWAY, "--socket", daemon.sock, "--listen", "127.0.0.1:0", "--generation-config", bad],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "top_p" in r.stderr


def test_disconnect_while_suspended_nonstreaming(gw):
    """A non-streaming request waits in a suspended connection, which
    libmicrohttpd does not watch: the runner's POLLRDHUP check must notice
    the hang-up and cancel in residentd."""
    import socket
    before = gw.metrics()
    s = socket.create_connection(("127.0.0.1", gw.port))
    body = json.dumps({"model": MODEL, "messages": MSGS, "max_tokens": MAX_NEW_TOKENS}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.time() + 5
    while gw.metrics()["resident_openai_requests_running"] < 1 and time.time() < deadline:
        time.sleep(0.01)
    assert gw.metrics()["resident_openai_requests_running"] == 1
    time.sleep(0.2)
    t0 = time.time()
    s.close()
    while time.time() < t0 + 5:
        m = gw.metrics()
        if m["resident_openai_requests_running"] == 0:
            break
        time.sleep(0.02)
    assert m["resident_openai_requests_running"] == 0
    assert time.time() - t0 < 2.0
    assert m['resident_openai_finished_total{reason="cancelled"}'] == \
        before['resident_openai_finished_total{reason="cancelled"}'] + 1
    assert m["resident_openai_client_disconnects_total"] == before["resident_openai_client_disconnects_total"] + 1


def test_burst_over_the_limit(gw):
    """30 requests at once against --max-concurrent 8: each one is either
    served or refused with 429, and nothing is left running afterwards."""
    statuses, lock = [], threading.Lock()

    def one(i):
        body = {"model": MODEL, "messages": MSGS, "max_tokens": 300, "seed": i, "stream": i % 2 == 0}
        status, _, data = gw.request("POST", "/v1/chat/completions", body)
        if status == 200 and i % 2 == 0:
            assert data.decode().endswith("data: [DONE]\n\n")
        with lock:
            statuses.append(status)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == 30 and set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 8
    m = gw.metrics()
    assert m["resident_openai_requests_running"] == 0 and m["resident_openai_queue_depth"] == 0
    assert m["resident_openai_daemon_sessions"] <= 9
