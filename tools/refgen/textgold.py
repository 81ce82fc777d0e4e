"""Text goldens: HF tokenizers encodings of a varied corpus and apply_chat_template renderings."""
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def corpus():
    c = []
    add = c.append
    # --- ASCII prose
    prose = [
        "Hello world",
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "You are a helpful assistant.",
        "What is 2+2?",
        "It was the best of times, it was the worst of times, it was the age of wisdom.",
        "A man, a plan, a canal: Panama.",
        "   leading spaces",
        "trailing spaces   ",
        "Mr. Smith went to Washington D.C. on Jan. 3rd, 2024 at 4:30 p.m.",
        "e-mail: someone@example.com, URL: https://example.org/path?q=1&r=two#frag",
        "\"Quoted\" and 'single quoted' and `backticks`",
        "(parentheses) [brackets] {braces} <angles>",
        "semi;colon:colon,comma.period!bang?question",
        "ALL CAPS SENTENCE WITH SHOUTING",
        "camelCaseIdentifier snake_case_identifier kebab-case-identifier",
        "",
        " ",
        "a",
        "I",
        "\t",
        "\n",
    ]
    for p in prose:
        add(p)
    # --- contractions in all cases
    for w in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]:
        for form in (w, w.upper(), w[0] + w[1:].capitalize()):
            add(f"it{form} fine")
            add(f"IT{form} FINE")
    add("I'm can't won't shouldn't y'all'd've it's")
    add("I'M CAN'T WON'T SHOULDN'T Y'ALL'D'VE IT'S")
    add("She'S He'Ll They'Re We'Ve I'D")
    add("rock 'n' roll, 'tis, o'clock, ma'am")
    add("don’t (curly apostrophe) vs don't")
    # --- digits and numbers
    for n in ["0", "7", "42", "123", "1234", "12345", "123456789", "3.14159", "-273.15", "1e-6", "6.022e23",
              "1,000,000", "0x1F", "0b1011", "2026-11-26", "12:34:56", "+1 (555) 010-9999", "v1.2.3", "100%", "$19.99",
              "١٢٣ Arabic-Indic digits", "一二三 and ১২৩", "²³ superscripts", "Ⅻ roman numeral"]:
        add(n)
    for k in range(1, 21):
        add("9" * k)
    # --- whitespace runs and mixed newlines
    for k in [1, 2, 3, 4, 7, 8, 15, 16, 33]:
        add("a" + " " * k + "b")
        add("x" + "\n" * min(k, 9) + "y")
    add("line1\r\nline2\r\nline3")
    add("line1\rline2\rline3")
    add("mixed\n\r\n\r\n\nnewlines")
    add("tabs\tand\t\tdouble\ttabs")
    add("  \n  \n\t\n")
    add("end with newline\n")
    add("end with spaces and newline   \n")
    add("\u00a0non-breaking\u00a0spaces\u2003em\u2009thin")
    add("   \t  \n\n   mixed   \t\t whitespace  ")
    # --- source code
    code = [
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "#include <stdio.h>\nint main(void) {\n\tprintf(\"hello %d\\n\", 42);\n\treturn 0;\n}\n",
        "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
        "const add = (a, b) => a + b;\nconsole.log(`sum=${add(1, 2)}`);\n",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
        "<html><body><div class=\"x\">Hi &amp; bye</div></body></html>",
        "{\"key\": [1, 2.5, true, null, {\"nested\": \"value\"}]}",
        "#!/bin/sh\nset -eu\nfor f in *.txt; do echo \"$f\"; done\n",
        "public class A { private static final int X = 0x7fffffff; }",
        "x = [i**2 for i in range(10) if i % 2 == 0]  # squares",
        "    indented    code    with    many    spaces",
        "if (a != b && c <= d || !e) { x >>= 2; y <<= 3; z ^= ~w; }",
        "// comment\n/* block\n   comment */\n",
        "\\begin{equation} E = mc^2 \\end{equation}",
        "a := b; c += d; e -= f; g *= h; i /= j; k %= l; m **= n",
        "import numpy as np\nnp.zeros((3, 4), dtype=np.float32)\n",
        "template<typename T> T max(T a, T b) { return a > b ? a : b; }",
        "std::vector<std::string> v{\"a\", \"b\"};",
        "@decorator\nasync def f(*args, **kwargs) -> None: ...",
    ]
    for s in code:
        add(s)
    # --- CJK
    for s in ["你好，世界！", "我爱北京天安门。", "毕老师！1 + 1 = 2", "日本語のテキストです。カタカナとひらがな。",
              "東京都渋谷区", "한국어 텍스트입니다.", "안녕하세요 세계", "漢字かな混じり文", "中文English混合text",
              "全角ＡＢＣ１２３", "「引用」『二重』【括弧】", "《书名》——破折号……省略号"]:
        add(s)
    # --- Thai / Devanagari / Arabic / Hebrew with combining marks
    for s in ["สวัสดีครับ ภาษาไทย", "ก่อนหน้านี้ น้ำ ผู้ใหญ่", "नमस्ते दुनिया", "हिन्दी भाषा क्षत्रिय", "संस्कृतम्",
              "مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ", "العربية مع التشكيل: كَتَبَ", "שלום עולם", "עִבְרִית עם ניקוד: בְּרֵאשִׁית",
              "e\u0301 combining acute (decomposed)", "\u00e9 precomposed", "n\u0303 a\u0308 o\u0302\u0323",
              "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo",
              "বাংলা ভাষা", "தமிழ் மொழி", "ქართული", "Ελληνικά κείμενα", "Русский текст, ёжик", "Українська ї є ґ",
              "Tiếng Việt có dấu", "Ärger über Öl, Straße"]:
        add(s)
    # --- emoji
    for s in ["😀", "👍🏽", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "❤️ vs ❤", "☺️☺︎", "🇺🇸🇯🇵🇩🇪", "🧑🏾‍💻 coder",
              "😶‍🌫️", "👩‍❤️‍💋‍👨", "1️⃣2️⃣#️⃣", "emoji🙂inside🙃words", "🤖🤖🤖🤖🤖", "©®™ symbols", "♠♥♦♣ ✓✗ →←↑↓"]:
        add(s)
    # --- added/special tokens in text
    for s in ["<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
              "text<|im_end|>more", "<think>\nreasoning\n</think>\n\nanswer", "<tool_call>\n<function=f>\n</function>\n</tool_call>",
              "<tool_response>\nok\n</tool_response>", "<|vision_start|><|image_pad|><|vision_end|>",
              "<|fim_prefix|>def <|fim_suffix|>\n<|fim_middle|>", "not special: <|im_start |> <im_start> <|unknown|>",
              "<|endoftext|><|endoftext|>", " <|im_start|> spaced", "<|box_start|>(1,2)<|box_end|>"]:
        add(s)
    # --- very long words
    add("Pneumonoultramicroscopicsilicovolcanoconiosis")
    add("Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft")
    add("a" * 100)
    add("ab" * 80)
    add("x" * 1000)
    add("supercalifragilisticexpialidocious" * 5)
    add("-" * 64)
    add("=" * 50 + "\n" + "#" * 50)
    add("http://" + "very-long-subdomain." * 8 + "example.com")
    add("🙂" * 30)
    add("中" * 60)
    # --- mixed
    add("Mixed: English, 中文, русский, العربية, हिन्दी, 😀 and code `x += 1`.")
    add("Price: €12.50 / £10 / ¥1500 / ₹999")
    add("Math: ∑_{i=1}^{n} i² = n(n+1)(2n+1)/6 ≈ ∞ ≠ ∅")
    add("Tab\tseparated\tvalues\n1\t2\t3")
    add("CSV,with,commas\n\"quoted,field\",2,3")
    # --- systematic variants: leading space / punctuation / case / possessive
    for w in ["hello", "token", "serving", "daemon", "Qwen", "naïve", "café", "über", "東京", "мир", "ok", "GPU"]:
        for form in (w, " " + w, w + ".", w.upper(), w.capitalize() + "'s", "  " + w + "\n", "\t" + w + "!"):
            add(form)
    for a in ["1", "12", "123"]:
        for b in [" ", ".", ",", "\n", "a", "x1"]:
            add(a + b + a)
    return c


def extra_llama_cases(shared):
    p = os.path.join(shared, "models", "qwen3-tokenizer", "ggml-vocab-qwen2.gguf.inp")
    if not os.path.exists(p):
        return []
    with open(p, encoding="utf-8") as f:
        return f.read().split("\n__ggml_vocab_test__\n")


def tokenizer_goldens(tok_json, shared):
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(tok_json)
    texts = corpus()
    seen = set()
    out = []
    for t in texts + extra_llama_cases(shared):
        if t in seen:
            continue
        seen.add(t)
        enc = tk.encode(t, add_special_tokens=False)
        ids = enc.ids
        dec = tk.decode(ids, skip_special_tokens=False)
        out.append({"text": t, "ids": ids, "decoded": dec, "roundtrip": dec == t})
    return out


def _tools():
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
    search = {"type": "function", "function": {
        "name": "search", "description": "Search the web.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string"}, "max_results": {"type": "integer"}}, "required": ["query"]}}}
    nodesc = {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}
    noparams = {"type": "function", "function": {"name": "now", "description": "Current time."}}
    nulls = {"type": "function", "function": {"name": "noop", "description": None, "parameters": None}}
    return weather, search, nodesc, noparams, nulls


def conversations():
    weather, search, nodesc, noparams, nulls = _tools()
    U = lambda c: {"role": "user", "content": c}
    S = lambda c: {"role": "system", "content": c}
    A = lambda c, **k: dict({"role": "assistant", "content": c}, **k)
    T = lambda c: {"role": "tool", "content": c}
    call = lambda name, args: {"type": "function", "function": {"name": name, "arguments": args}}
    cs = []

    def add(name, messages, tools=None, kw=None, agp=True):
        cs.append({"name": name, "messages": messages, "tools": tools, "chat_template_kwargs": kw or {},
                   "add_generation_prompt": agp})

    add("user_only", [U("What is 2+2?")])
    add("user_only_nothink", [U("What is 2+2?")], kw={"enable_thinking": False})
    add("user_only_think_true", [U("What is 2+2?")], kw={"enable_thinking": True})
    add("user_no_gen_prompt", [U("Hi")], agp=False)
    add("system_user", [S("You are a helpful assistant."), U("Hello!")])
    add("system_whitespace_trimmed", [S("  padded system  \n"), U("  padded user \n\n")])
    add("system_user_assistant", [S("Be brief."), U("Hi"), A("Hello!")], agp=False)
    add("multiturn_reasoning_dropped", [U("Hi"), A("Hello! How can I help?", reasoning_content="Greet back."),
                                        U("Tell me a joke.")])
    add("multiturn_reasoning_preserved", [U("Hi"), A("Hello! How can I help?", reasoning_content="Greet back."),
                                          U("Tell me a joke.")], kw={"preserve_thinking": True})
    add("inline_think_in_content", [U("Hi"), A("<think>\nGreet back.\n</think>\n\nHello!"), U("Again")])
    add("inline_think_last_turn", [U("Hi"), A("<think>\nGreet back.\n</think>\n\nHello!")], agp=False)
    add("tools_system", [S("You are a helpful assistant."), U("Weather in Paris?")], tools=[weather, search])
    add("tools_no_system", [U("Weather in Paris?")], tools=[weather])
    add("tools_without_description_or_parameters", [U("ping it")], tools=[nodesc, noparams])
    add("tools_null_description_parameters", [U("do nothing")], tools=[nulls])
    add("tool_call_pending", [U("Weather in Paris?"),
                              A("", reasoning_content="Need the weather tool.",
                                tool_calls=[call("get_weather", {"city": "Paris", "unit": "celsius"})]),
                              T('{"temp_c": 18, "sky": "cloudy"}')], tools=[weather])
    add("tool_call_final", [U("Weather in Paris?"),
                            A("", reasoning_content="Need the weather tool.",
                              tool_calls=[call("get_weather", {"city": "Paris", "unit": "celsius"})]),
                            T('{"temp_c": 18, "sky": "cloudy"}'),
                            A("It is 18 °C and cloudy in Paris.", reasoning_content="Report it.")],
        tools=[weather], agp=False)
    add("tool_call_all_argument_types", [U("Go"), A("Checking.", tool_calls=[
        call("search", {"query": "llm serving", "max_results": 5}),
        call("mixed", {"s": "text with\nnewline", "i": 42, "f": -1.5, "t": True, "fa": False, "n": None,
                       "o": {"k": "v", "nested": {"x": [1, 2]}}, "a": [1, "two", None, True], "u": "ünïcødé ✓"})]),
        T("result one"), T("result two")], tools=[search])
    add("tool_call_no_content_two_calls", [U("Both"), A(None, tool_calls=[
        call("get_weather", {"city": "Oslo"}), call("get_weather", {"city": "Rome"})]),
        T("cold"), T("warm")], tools=[weather])
    add("tool_call_without_function_wrapper", [U("Go"), A("", tool_calls=[{"name": "now", "arguments": {}}]),
                                               T("12:00")], tools=[noparams])
    add("three_consecutive_tool_responses_then_user", [U("Run all"), A("", tool_calls=[
        call("a", {"x": 1}), call("b", {"y": "2"}), call("c", {})]), T("A"), T("B"), T("C"),
        A("Done."), U("Thanks, again please")], tools=[weather])
    add("tool_response_as_user_content_multistep", [U("Start"), A("", tool_calls=[call("now", {})]),
                                                     T("12:00"), A("", tool_calls=[call("now", {})]), T("12:01")],
        tools=[noparams])
    add("list_content_text_items", [{"role": "user", "content": [{"type": "text", "text": "part one "},
                                                                  {"type": "text", "text": "part two"}]}])
    add("list_content_with_image", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}])
    add("unicode_content", [S("Réponds en français."), U("¿Qué tal? 你好 😀 שלום"), A("Très bien ✓", reasoning_content="思考")],
        agp=False)
    add("reasoning_after_last_query_kept", [U("Q1"), A("A1", reasoning_content="r1"), U("Q2"),
                                            A("", reasoning_content="r2", tool_calls=[call("now", {})]), T("t"),
                                            A("A2", reasoning_content="r3")], tools=[noparams], agp=False)
    add("empty_reasoning_content", [U("Hi"), A("Hello", reasoning_content="")], agp=False)
    add("long_multiturn_nothink", [S("sys"), U("1"), A("one"), U("2"), A("two"), U("3")], kw={"enable_thinking": False})
    add("add_vision_id", [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}],
        kw={"add_vision_id": True})
    # error cases
    add("error_no_messages", [])
    add("error_system_not_first", [U("Hi"), S("late system")])
    add("error_no_user_query", [S("only system")])
    add("error_only_tool_responses", [{"role": "user", "content": "<tool_response>\nx\n</tool_response>"}])
    add("error_unexpected_role", [U("Hi"), {"role": "critic", "content": "bad"}])
    add("error_system_with_image", [{"role": "system", "content": [{"type": "image"}]}, U("Hi")])
    add("error_unexpected_content_type", [{"role": "user", "content": 42}])
    add("error_unexpected_item_type", [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}])
    return cs


def chat_goldens(model_dir, template_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    with open(template_path, encoding="utf-8") as f:
        tok.chat_template = f.read()
    out = []
    for c in conversations():
        rec = dict(c)
        try:
            rec["rendered"] = tok.apply_chat_template(c["messages"], tools=c["tools"], tokenize=False,
                                                      add_generation_prompt=c["add_generation_prompt"],
                                                      **c["chat_template_kwargs"])
        except Exception as e:  # jinja2 TemplateError raised by raise_exception
            rec["error"] = str(e)
        out.append(rec)
    return out


def build(out_root, model_dir):
    shared = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared"))
    template = os.path.join(shared, "models", "qwen3.6-tokenizer", "chat_template.jinja")
    d = os.path.join(out_root, "text")
    os.makedirs(d, exist_ok=True)
    tg = tokenizer_goldens(os.path.join(model_dir, "tokenizer.json"), shared)
    with open(os.path.join(d, "tokenizer_goldens.json"), "w", encoding="utf-8") as f:
        json.dump(tg, f, ensure_ascii=False, indent=0)
        f.write("\n")
    cg = chat_goldens(model_dir, template)
    with open(os.path.join(d, "chat_goldens.json"), "w", encoding="utf-8") as f:
        json.dump(cg, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(template, "rb") as f:
        tsha = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(model_dir, "tokenizer.json"), "rb") as f:
        ksha = hashlib.sha256(f.read()).hexdigest()
    return {
        "tokenizer_goldens": {"file": "text/tokenizer_goldens.json", "count": len(tg),
                              "roundtrip_failures": sum(1 for r in tg if not r["roundtrip"]),
                              "tokenizer": "default-model/tokenizer.json (Qwen3 151k byte-level BPE)",
                              "tokenizer_sha256": ksha,
                              "how": "tokenizers.Tokenizer.from_file(...).encode(text, add_special_tokens=False).ids; "
                                     "decoded = decode(ids, skip_special_tokens=False); added tokens in the text are matched"},
        "chat_goldens": {"file": "text/chat_goldens.json", "count": len(cg),
                         "errors": sum(1 for r in cg if "error" in r),
                         "template": "shared/models/qwen3.6-tokenizer/chat_template.jinja (also default-model/chat_template.jinja)",
                         "template_sha256": tsha,
                         "how": "transformers PreTrainedTokenizerFast.apply_chat_template(messages, tools=tools, tokenize=False, "
                                "add_generation_prompt=..., **chat_template_kwargs)"},
    }
