#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Shape-faithful synthetic Qwen3.6-35B-A3B checkpoint for benchmarks.

Writes, into OUT (a git-ignored folder such as .dev/synth-8L):
  config.json, model-*.safetensors, model.safetensors.index.json
      the real model's dimensions (hidden 2048; 256 experts, top 8, width
      512, shared expert 512; 16 q / 2 kv heads of 256 with the output gate;
      Gated DeltaNet 16 k / 32 v heads of 128; vocab 248,320; untied bf16
      lm_head) with --layers layers in the real 3 GDN : 1 attention pattern,
      random weights in the exact compressed-tensors W4A16 layout
      (pack-quantized, symmetric int4, group 32, bf16 scales, per-expert
      tensor names) like tests/data/models/tiny-w4g32.
  model-q4_0.gguf (unless --no-gguf)
      the SAME weights for llama.cpp (architecture qwen35moe, llama.cpp's
      tensor names and shapes): every W4 matrix as Q4_0, bit-exact: each
      group of 32 is generated to contain the value -8 (nibble 0), so
      Q4_0's scale d = max|w| / 8 is our scale (bf16 -> fp16 is exact in
      the range used) and its nibbles (q + 8) are ours, only re-ordered
      (Q4_0 byte j holds elements j and j + 16; compressed-tensors word k
      holds 8 consecutive elements). The checkpoint's dense bf16 tensors
      (embeddings, lm_head) stay bf16; the router is f32 (llama.cpp keeps
      it in f32 after conversion); norms, conv and GDN constants are f32,
      converted the way llama.cpp's converter does (zero-centred norms + 1,
      A = -exp(A_log)). Not done: the converter's GDN value-head
      re-ordering, so the two engines' outputs are not numerically
      comparable on this model; only their speed is. A byte-level
      vocabulary of 248,320 placeholder tokens satisfies llama.cpp's loader.

Usage: synth.py OUT [--layers 8] [--seed 1] [--no-gguf]
       synth.py OUT --layers 40 --config-only [--template CONFIG_JSON]
           config.json and generation_config.json only (standard library;
           the tensors then come from tools/gpu/synth-gen, same layout).
"""
import argparse
import hashlib
import json
import os
import sys

try:
    import numpy as np
    from safetensors.numpy import save_file
except ImportError:     # --config-only needs neither (the GPU machine's C
    np = None           # generator tools/gpu/synth-gen writes the tensors)

H = 2048
N_EXP, TOP_K, INTER, SHARED = 256, 8, 512, 512
NQ, NKV, HD = 16, 2, 256
NK, NV, DK, DV = 16, 32, 128, 128
VOCAB = 248320
CONV_K = 4
KEY_DIM, VAL_DIM = NK * DK, NV * DV
CONV_DIM = 2 * KEY_DIM + VAL_DIM
PFX = "model.language_model."


def rng_for(seed, name):
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def layer_types(n):
    return ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)]


# ---------------------------------------------------------------- W4 data

def q4_nibbles(rng, shape):
    """Unsigned nibbles u = q + 8 (uint8 0..15), shape (..., rows, cols);
    every group of 32 holds at least one u = 0 (q = -8)."""
    u = rng.integers(0, 16, size=shape, dtype=np.uint8)
    g = u.reshape(shape[:-1] + (shape[-1] // 32, 32))
    pos = rng.integers(0, 32, size=g.shape[:-1])
    np.put_along_axis(g, pos[..., None], 0, axis=-1)
    return u


def q4_scales(rng, shape, fan_in):
    """bf16 scales (uint16) so that weights have std ~ 1/sqrt(fan_in)."""
    target = 1.0 / np.sqrt(fan_in) / 4.6
    s = (target * rng.uniform(0.7, 1.3, size=shape)).astype(np.float32)
    return (s.view(np.uint32) >> 16).astype(np.uint16)     # truncate: exact bf16


def pack_ct(u):
    """compressed-tensors pack-quantized: int32 words of 8 nibbles, lowest
    nibble = lowest column."""
    w = u.reshape(u.shape[:-1] + (u.shape[-1] // 8, 8)).astype(np.uint32)
    word = np.zeros(w.shape[:-1], dtype=np.uint32)
    for k in range(8):
        word |= w[..., k] << (4 * k)
    return word.view(np.int32)


def pack_q4_0(u, scales_bf16):
    """ggml block_q4_0: fp16 d, then 16 bytes, byte j = elem j | elem j+16 << 4."""
    g = u.reshape(u.shape[:-1] + (u.shape[-1] // 32, 32))
    qs = (g[..., :16] | (g[..., 16:] << 4)).astype(np.uint8)
    d = (scales_bf16.astype(np.uint32) << 16).view(np.float32).astype(np.float16)
    blk = np.concatenate([d[..., None].view(np.uint8), qs], axis=-1)
    return blk.reshape(u.shape[:-1] + (u.shape[-1] // 32 * 18,))


def q4_weight(seed, name, rows, cols, lead=()):
    rng = rng_for(seed, name)
    u = q4_nibbles(rng, lead + (rows, cols))
    s = q4_scales(rng, lead + (rows, cols // 32), cols)
    return u, s


def bf16_normal(seed, name, shape, std):
    rng = rng_for(seed, name)
    out = np.empty(shape, dtype=np.uint16)
    flat = out.reshape(-1)
    step = 1 << 24
    for i in range(0, flat.size, step):
        n = min(step, flat.size - i)
        v = (rng.standard_normal(n, dtype=np.float32) * std)
        flat[i:i + n] = (v.view(np.uint32) >> 16).astype(np.uint16)
    return out


def f32_of_bf16(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def small(seed, name, shape, lo, hi):
    v = rng_for(seed, name).uniform(lo, hi, size=shape).astype(np.float32)
    return (v.view(np.uint32) >> 16).astype(np.uint16)


# ---------------------------------------------------------------- layers

def layer_tensors(seed, i, kind):
    """Yield (hf_name, kind, payload) for layer i. kind 'q4' -> (u, s)
    with u (rows, cols) or (E, rows, cols); 'bf16' -> uint16 array."""
    p = f"{PFX}layers.{i}."
    yield p + "input_layernorm.weight", "bf16", small(seed, p + "in_norm", (H,), -0.1, 0.1)
    yield p + "post_attention_layernorm.weight", "bf16", small(seed, p + "post_norm", (H,), -0.1, 0.1)
    if kind == "linear_attention":
        a = p + "linear_attn."
        yield a + "in_proj_qkv", "q4", q4_weight(seed, a + "qkv", CONV_DIM, H)
        yield a + "in_proj_z", "q4", q4_weight(seed, a + "z", VAL_DIM, H)
        yield a + "in_proj_b", "q4", q4_weight(seed, a + "b", NV, H)
        yield a + "in_proj_a", "q4", q4_weight(seed, a + "a", NV, H)
        yield a + "out_proj", "q4", q4_weight(seed, a + "out", H, VAL_DIM)
        yield a + "conv1d.weight", "bf16", small(seed, a + "conv", (CONV_DIM, 1, CONV_K), -0.5, 0.5)
        a_log = np.log(rng_for(seed, a + "A").uniform(1, 16, NV)).astype(np.float32)
        yield a + "A_log", "bf16", (a_log.view(np.uint32) >> 16).astype(np.uint16)
        yield a + "dt_bias", "bf16", small(seed, a + "dt", (NV,), 0.0, 1.0)
        yield a + "norm.weight", "bf16", small(seed, a + "norm", (DV,), 0.9, 1.1)
    else:
        a = p + "self_attn."
        yield a + "q_proj", "q4", q4_weight(seed, a + "q", NQ * HD * 2, H)
        yield a + "k_proj", "q4", q4_weight(seed, a + "k", NKV * HD, H)
        yield a + "v_proj", "q4", q4_weight(seed, a + "v", NKV * HD, H)
        yield a + "o_proj", "q4", q4_weight(seed, a + "o", H, NQ * HD)
        yield a + "q_norm.weight", "bf16", small(seed, a + "qn", (HD,), -0.1, 0.1)
        yield a + "k_norm.weight", "bf16", small(seed, a + "kn", (HD,), -0.1, 0.1)
    m = p + "mlp."
    yield m + "gate.weight", "bf16", bf16_normal(seed, m + "router", (N_EXP, H), 0.05)
    yield m + "shared_expert_gate.weight", "bf16", bf16_normal(seed, m + "seg", (1, H), 0.02)
    yield m + "shared_expert.gate_proj", "q4", q4_weight(seed, m + "sg", SHARED, H)
    yield m + "shared_expert.up_proj", "q4", q4_weight(seed, m + "su", SHARED, H)
    yield m + "shared_expert.down_proj", "q4", q4_weight(seed, m + "sd", H, SHARED)
    yield m + "experts.gate_proj", "q4e", q4_weight(seed, m + "eg", INTER, H, (N_EXP,))
    yield m + "experts.up_proj", "q4e", q4_weight(seed, m + "eu", INTER, H, (N_EXP,))
    yield m + "experts.down_proj", "q4e", q4_weight(seed, m + "ed", H, INTER, (N_EXP,))


def global_tensors(seed, which):
    if which == "embed":
        return bf16_normal(seed, "embed", (VOCAB, H), 0.02)
    if which == "lm_head":
        return bf16_normal(seed, "lm_head", (VOCAB, H), 0.02)
    return small(seed, "final_norm", (H,), -0.1, 0.1)


# ---------------------------------------------------------------- safetensors

def write_safetensors(out, layers, seed):
    types = layer_types(layers)
    weight_map = {}

    def save(fname, tensors):
        save_file(tensors, os.path.join(out, fname), metadata={"format": "pt"})
        for k in tensors:
            weight_map[k] = fname

    def q4_entries(name, u, s, d):
        d[name + ".weight_packed"] = pack_ct(u)
        d[name + ".weight_scale"] = s.view(np.uint16)
        d[name + ".weight_shape"] = np.array(u.shape[-2:], dtype=np.int64)

    n_files = layers + 2
    save(f"model-00001-of-{n_files:05d}.safetensors",
         {PFX + "embed_tokens.weight": global_tensors(seed, "embed"),
          PFX + "norm.weight": global_tensors(seed, "norm")})
    for i in range(layers):
        d = {}
        for name, kind, payload in layer_tensors(seed, i, types[i]):
            if kind == "q4":
                q4_entries(name, *payload, d)
            elif kind == "q4e":
                u, s = payload
                base, proj = name.rsplit(".", 1)
                for e in range(N_EXP):
                    q4_entries(f"{base}.{e}.{proj}", u[e], s[e], d)
            else:
                d[name] = payload
        save(f"model-{i + 2:05d}-of-{n_files:05d}.safetensors", d)
        print(f"synth: layer {i} ({types[i]}) written", file=sys.stderr, flush=True)
    save(f"model-{n_files:05d}-of-{n_files:05d}.safetensors",
         {"lm_head.weight": global_tensors(seed, "lm_head")})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)


def fix_bf16_headers(out):
    """Mark every U16 tensor BF16: safetensors.numpy has no bfloat16, so
    bf16 payloads are written as uint16 (same 2 bytes) and relabelled."""
    import struct
    for fn in os.listdir(out):
        if not fn.endswith(".safetensors"):
            continue
        path = os.path.join(out, fn)
        with open(path, "r+b") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            hdr = f.read(n)
            new = hdr.replace(b'"dtype":"U16"', b'"dtype":"BF16"')
            assert len(new) == len(hdr) + hdr.count(b'"dtype":"U16"')
            # keep the header length: pad with spaces by trimming the
            # trailing padding safetensors wrote, or rewrite the file
            if len(new) <= n:
                f.seek(8)
                f.write(new + b" " * (n - len(new)))
                continue
        _rewrite_header(path, n, new)


def _rewrite_header(path, n, new):
    import struct
    pad = (8 - (len(new) % 8)) % 8
    new = new + b" " * pad
    tmp = path + ".tmp"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(struct.pack("<Q", len(new)))
        dst.write(new)
        src.seek(8 + n)
        while True:
            b = src.read(1 << 24)
            if not b:
                break
            dst.write(b)
    os.replace(tmp, path)


def write_config(out, layers, template=None):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    if template is None:
        template = os.path.join(root, "tests/data/models/tiny-w4g32/config.json")
    with open(template) as f:
        cfg = json.load(f)
    t = cfg["text_config"]
    t.update({
        "hidden_size": H, "num_hidden_layers": layers, "layer_types": layer_types(layers),
        "head_dim": HD, "num_attention_heads": NQ, "num_key_value_heads": NKV,
        "linear_key_head_dim": DK, "linear_value_head_dim": DV,
        "linear_num_key_heads": NK, "linear_num_value_heads": NV,
        "linear_conv_kernel_dim": CONV_K, "moe_intermediate_size": INTER,
        "shared_expert_intermediate_size": SHARED, "num_experts": N_EXP,
        "num_experts_per_tok": TOP_K, "vocab_size": VOCAB, "max_position_embeddings": 262144,
        "mtp_num_hidden_layers": 0, "bos_token_id": 248044, "eos_token_id": 248046,
        "pad_token_id": 248044,
    })
    t["rope_parameters"]["mrope_section"] = [11, 11, 10]
    t["rope_parameters"]["rope_theta"] = 10000000.0
    q = cfg["quantization_config"]
    q["ignore"] = [x for x in q["ignore"] if not x.startswith("model.language_model.layers.")]
    for i in range(layers):
        q["ignore"] += [f"model.language_model.layers.{i}.mlp.gate",
                        f"model.language_model.layers.{i}.mlp.shared_expert_gate"]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 248044, "eos_token_id": 248046}, f)


# ---------------------------------------------------------------- GGUF

def gguf_plan(seed, layers):
    """(gguf_name, producer) in file order; producer() -> (array, raw_type)."""
    import gguf
    Q = gguf.GGMLQuantizationType
    types = layer_types(layers)
    plan = [("token_embd.weight", lambda: (global_tensors(seed, "embed"), Q.BF16))]
    for i in range(layers):
        def mk(i=i):
            out = []
            for name, kind, payload in layer_tensors(seed, i, types[i]):
                out.append((name, kind, payload))
            return out
        plan.append((f"@layer{i}", mk))
    plan.append(("output_norm.weight",
                 lambda: (f32_of_bf16(global_tensors(seed, "norm")) + 1.0, Q.F32)))
    plan.append(("output.weight", lambda: (global_tensors(seed, "lm_head"), Q.BF16)))
    return plan


GG_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "linear_attn.in_proj_qkv": "attn_qkv.weight",
    "linear_attn.in_proj_z": "attn_gate.weight",
    "linear_attn.in_proj_b": "ssm_beta.weight",
    "linear_attn.in_proj_a": "ssm_alpha.weight",
    "linear_attn.out_proj": "ssm_out.weight",
    "linear_attn.conv1d.weight": "ssm_conv1d.weight",
    "linear_attn.A_log": "ssm_a",
    "linear_attn.dt_bias": "ssm_dt.bias",
    "linear_attn.norm.weight": "ssm_norm.weight",
    "self_attn.q_proj": "attn_q.weight",
    "self_attn.k_proj": "attn_k.weight",
    "self_attn.v_proj": "attn_v.weight",
    "self_attn.o_proj": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj": "ffn_down_shexp.weight",
    "mlp.experts.gate_proj": "ffn_gate_exps.weight",
    "mlp.experts.up_proj": "ffn_up_exps.weight",
    "mlp.experts.down_proj": "ffn_down_exps.weight",
}


def gguf_layer(i, items):
    import gguf
    Q = gguf.GGMLQuantizationType
    for name, kind, payload in items:
        short = name.split(f"layers.{i}.", 1)[1]
        gname = f"blk.{i}." + GG_NAMES[short]
        if kind in ("q4", "q4e"):
            u, s = payload
            yield gname, pack_q4_0(u, s), Q.Q4_0
            continue
        v = f32_of_bf16(payload)
        if short.endswith("A_log"):
            v = -np.exp(v)
        elif short.endswith("conv1d.weight"):
            v = v.reshape(CONV_DIM, CONV_K)
        elif short.endswith("shared_expert_gate.weight"):
            v = v.reshape(H)
        elif short.endswith("norm.weight") and "linear_attn" not in short:
            v = v + 1.0                                    # zero-centred norms
        yield gname, np.ascontiguousarray(v.astype(np.float32)), Q.F32


def write_gguf(path, seed, layers):
    import gguf
    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(path, "qwen35moe")
    w.add_name("resident-synth")
    w.add_context_length(262144)
    w.add_embedding_length(H)
    w.add_block_count(layers)
    w.add_head_count(NQ)
    w.add_head_count_kv(NKV)
    w.add_key_length(HD)
    w.add_value_length(HD)
    w.add_rope_dimension_count(HD // 4)
    w.add_rope_dimension_sections([11, 11, 10, 0])
    w.add_rope_freq_base(10000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(N_EXP)
    w.add_expert_used_count(TOP_K)
    w.add_expert_feed_forward_length(INTER)
    w.add_expert_shared_feed_forward_length(SHARED)
    w.add_ssm_conv_kernel(CONV_K)
    w.add_ssm_state_size(DK)
    w.add_ssm_group_count(NK)
    w.add_ssm_time_step_rank(NV)
    w.add_ssm_inner_size(VAL_DIM)
    w.add_full_attention_interval(4)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    # placeholder SentencePiece-style vocabulary: 256 byte tokens, then
    # numbered tokens
    toks = [f"<0x{b:02X}>".encode() for b in range(256)] + \
           [f"t{i}".encode() for i in range(256, VOCAB)]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([6] * 256 + [1] * (VOCAB - 256))
    w.add_bos_token_id(248044)
    w.add_eos_token_id(248046)

    # pass 1: tensor infos (shapes from a dry run of the producers would
    # regenerate everything; the shapes are known in closed form instead)
    types = layer_types(layers)
    infos = [("token_embd.weight", (VOCAB, H), Q.BF16)]
    for i in range(layers):
        for name, shape, t in layer_shapes(i, types[i]):
            infos.append((name, shape, t))
    infos += [("output_norm.weight", (H,), Q.F32), ("output.weight", (VOCAB, H), Q.BF16)]
    for name, shape, t in infos:
        if t == Q.Q4_0:
            byte_shape = shape[:-1] + (shape[-1] // 32 * 18,)
            nbytes = int(np.prod(byte_shape))
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=t)
        elif t == Q.BF16:
            w.add_tensor_info(name, shape, np.dtype(np.uint16), int(np.prod(shape)) * 2, raw_dtype=t)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    expect = iter(infos)

    def put(name, arr):
        ename, shape, _ = next(expect)
        assert ename == name, (ename, name)
        w.write_tensor_data(arr)

    put("token_embd.weight", global_tensors(seed, "embed"))
    for i in range(layers):
        for gname, arr, _ in gguf_layer(i, layer_tensors(seed, i, types[i])):
            put(gname, arr)
        print(f"synth: gguf layer {i} written", file=sys.stderr, flush=True)
    put("output_norm.weight", f32_of_bf16(global_tensors(seed, "norm")) + 1.0)
    put("output.weight", global_tensors(seed, "lm_head"))
    w.close()


def layer_shapes(i, kind):
    import gguf
    Q = gguf.GGMLQuantizationType
    b = f"blk.{i}."
    out = [(b + "attn_norm.weight", (H,), Q.F32), (b + "post_attention_norm.weight", (H,), Q.F32)]
    if kind == "linear_attention":
        out += [(b + "attn_qkv.weight", (CONV_DIM, H), Q.Q4_0),
                (b + "attn_gate.weight", (VAL_DIM, H), Q.Q4_0),
                (b + "ssm_beta.weight", (NV, H), Q.Q4_0),
                (b + "ssm_alpha.weight", (NV, H), Q.Q4_0),
                (b + "ssm_out.weight", (H, VAL_DIM), Q.Q4_0),
                (b + "ssm_conv1d.weight", (CONV_DIM, CONV_K), Q.F32),
                (b + "ssm_a", (NV,), Q.F32),
                (b + "ssm_dt.bias", (NV,), Q.F32),
                (b + "ssm_norm.weight", (DV,), Q.F32)]
    else:
        out += [(b + "attn_q.weight", (NQ * HD * 2, H), Q.Q4_0),
                (b + "attn_k.weight", (NKV * HD, H), Q.Q4_0),
                (b + "attn_v.weight", (NKV * HD, H), Q.Q4_0),
                (b + "attn_output.weight", (H, NQ * HD), Q.Q4_0),
                (b + "attn_q_norm.weight", (HD,), Q.F32),
                (b + "attn_k_norm.weight", (HD,), Q.F32)]
    out += [(b + "ffn_gate_inp.weight", (N_EXP, H), Q.F32),
            (b + "ffn_gate_inp_shexp.weight", (H,), Q.F32),
            (b + "ffn_gate_shexp.weight", (SHARED, H), Q.Q4_0),
            (b + "ffn_up_shexp.weight", (SHARED, H), Q.Q4_0),
            (b + "ffn_down_shexp.weight", (H, SHARED), Q.Q4_0),
            (b + "ffn_gate_exps.weight", (N_EXP, INTER, H), Q.Q4_0),
            (b + "ffn_up_exps.weight", (N_EXP, INTER, H), Q.Q4_0),
            (b + "ffn_down_exps.weight", (N_EXP, H, INTER), Q.Q4_0)]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-gguf", action="store_true")
    ap.add_argument("--gguf-only", action="store_true")
    ap.add_argument("--config-only", action="store_true")
    ap.add_argument("--template", help="tiny-w4g32's config.json (default: tests/data)")
    a = ap.parse_args()
    if a.layers < 1 or a.layers % 4:
        ap.error("--layers must be a positive multiple of 4 (3 GDN : 1 attention)")
    os.makedirs(a.out, exist_ok=True)
    if a.config_only:
        write_config(a.out, a.layers, a.template)
        return 0
    if np is None:
        ap.error("numpy and safetensors are needed (pip install -r tools/synth/requirements.txt); "
                 "--config-only needs neither")
    if not a.gguf_only:
        write_config(a.out, a.layers)
        write_safetensors(a.out, a.layers, a.seed)
        fix_bf16_headers(a.out)
        with open(os.path.join(a.out, ".complete-safetensors"), "w") as f:
            f.write(f"layers {a.layers} seed {a.seed}\n")
    if not a.no_gguf:
        path = os.path.join(a.out, "model-q4_0.gguf")
        write_gguf(path + ".tmp", a.seed, a.layers)
        os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
