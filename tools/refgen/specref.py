#!/usr/bin/env python3
"""Independent float64 re-implementation of the text forward of shared/spec/model.md §2 (no transformers code),
used to cross-check the transformers goldens: spec reading vs reference implementation.

Usage: specref.py [DATA_DIR]   (default tests/data) — prints the max relative L2 error per golden.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from refgen import dequant, read_checkpoint  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

DT = torch.float64


class SpecModel:
    def __init__(self, ckpt):
        with open(os.path.join(ckpt, "config.json")) as f:
            self.cfg = json.load(f)["text_config"]
        self.t = read_checkpoint(ckpt)

    def W(self, name):
        t = self.t
        if name + ".weight" in t:
            return t[name + ".weight"].to(DT)
        if name + ".weight_packed" in t:
            return dequant(t[name + ".weight_packed"], t[name + ".weight_scale"], t[name + ".weight_shape"].tolist()).to(DT)
        raise KeyError(name)

    def P(self, name):
        return self.t[name].to(DT)

    def expert(self, pre, e):
        """(gate [I,H], up [I,H], down [H,I]) of expert e in any of the three layouts."""
        t = self.t
        if pre + ".gate_up_proj" in t:  # bf16 fused
            gu = t[pre + ".gate_up_proj"][e].to(DT)
            I = gu.shape[0] // 2
            return gu[:I], gu[I:], t[pre + ".down_proj"][e].to(DT)
        if pre + ".gate_up_proj.weight_packed" in t:  # fused packed
            sh = t[pre + ".gate_up_proj.weight_shape"].tolist()
            gu = dequant(t[pre + ".gate_up_proj.weight_packed"][e], t[pre + ".gate_up_proj.weight_scale"][e], sh[1:]).to(DT)
            shd = t[pre + ".down_proj.weight_shape"].tolist()
            d = dequant(t[pre + ".down_proj.weight_packed"][e], t[pre + ".down_proj.weight_scale"][e], shd[1:]).to(DT)
            I = gu.shape[0] // 2
            return gu[:I], gu[I:], d
        return self.W(f"{pre}.{e}.gate_proj"), self.W(f"{pre}.{e}.up_proj"), self.W(f"{pre}.{e}.down_proj")

    @staticmethod
    def rms0(x, w, eps):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * (1.0 + w)

    def forward(self, ids, state=None):
        """ids: 1-D tensor; state carries conv/recurrent/KV between calls. Returns logits [T,V], state."""
        c = self.cfg
        eps = c["rms_norm_eps"]
        p = "model.language_model."
        T = ids.shape[0]
        if state is None:
            state = {"pos": 0}
        pos0 = state["pos"]
        h = self.P(p + "embed_tokens.weight")[ids.long()]
        for li, lt in enumerate(c["layer_types"]):
            L = f"{p}layers.{li}."
            a = self.rms0(h, self.P(L + "input_layernorm.weight"), eps)
            if lt == "linear_attention":
                h = h + self.gdn(L + "linear_attn", a, state.setdefault(li, {}))
            else:
                h = h + self.attn(L + "self_attn", a, pos0, state.setdefault(li, {}))
            m = self.rms0(h, self.P(L + "post_attention_layernorm.weight"), eps)
            h = h + self.moe(L + "mlp", m)
        h = self.rms0(h, self.P(p + "norm.weight"), eps)
        lm = self.t.get("lm_head.weight")
        lm = (lm if lm is not None else self.t[p + "embed_tokens.weight"]).to(DT)
        state["pos"] = pos0 + T
        return h @ lm.T, state

    def gdn(self, pre, a, st):
        c = self.cfg
        Hk, Hv = c["linear_num_key_heads"], c["linear_num_value_heads"]
        dk, dv, K = c["linear_key_head_dim"], c["linear_value_head_dim"], c["linear_conv_kernel_dim"]
        T = a.shape[0]
        qkv = a @ self.W(pre + ".in_proj_qkv").T
        z = a @ self.W(pre + ".in_proj_z").T
        b = a @ self.W(pre + ".in_proj_b").T
        aa = a @ self.W(pre + ".in_proj_a").T
        cw = self.P(pre + ".conv1d.weight")[:, 0, :]  # [C, K]
        prev = st.get("conv", torch.zeros(K - 1, qkv.shape[1], dtype=DT))
        x = torch.cat([prev, qkv], 0)
        st["conv"] = x[-(K - 1):].clone()
        u = torch.stack([(x[t:t + K] * cw.T).sum(0) for t in range(T)])
        u = F.silu(u)
        q = u[:, : Hk * dk].reshape(T, Hk, dk)
        k = u[:, Hk * dk: 2 * Hk * dk].reshape(T, Hk, dk)
        v = u[:, 2 * Hk * dk:].reshape(T, Hv, dv)
        beta = torch.sigmoid(b)
        g = -torch.exp(self.P(pre + ".A_log")) * F.softplus(aa + self.P(pre + ".dt_bias"))
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) * dk ** -0.5
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
        r = Hv // Hk
        q = q.repeat_interleave(r, dim=1)
        k = k.repeat_interleave(r, dim=1)
        S = st.get("S", torch.zeros(Hv, dk, dv, dtype=DT))
        outs = []
        for t in range(T):
            S = S * torch.exp(g[t])[:, None, None]
            kv = torch.einsum("hkv,hk->hv", S, k[t])
            delta = beta[t][:, None] * (v[t] - kv)
            S = S + torch.einsum("hk,hv->hkv", k[t], delta)
            outs.append(torch.einsum("hkv,hk->hv", S, q[t]))
        st["S"] = S
        o = torch.stack(outs)  # [T, Hv, dv]
        zz = z.reshape(T, Hv, dv)
        o = self.P(pre + ".norm.weight") * (o * torch.rsqrt((o * o).mean(-1, keepdim=True) + c["rms_norm_eps"])) * F.silu(zz)
        return o.reshape(T, Hv * dv) @ self.W(pre + ".out_proj").T

    def attn(self, pre, a, pos0, st):
        c = self.cfg
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        eps = c["rms_norm_eps"]
        T = a.shape[0]
        qg = (a @ self.W(pre + ".q_proj").T).reshape(T, nh, 2 * hd)
        q, gate = qg[..., :hd], qg[..., hd:].reshape(T, nh * hd)
        k = (a @ self.W(pre + ".k_proj").T).reshape(T, nkv, hd)
        v = (a @ self.W(pre + ".v_proj").T).reshape(T, nkv, hd)
        q = self.rms0(q, self.P(pre + ".q_norm.weight"), eps)
        k = self.rms0(k, self.P(pre + ".k_norm.weight"), eps)
        rd = int(hd * c["partial_rotary_factor"])
        theta = c["rope_parameters"]["rope_theta"]
        inv = 1.0 / theta ** (torch.arange(0, rd, 2, dtype=DT) / rd)
        pos = torch.arange(pos0, pos0 + T, dtype=DT)
        ang = pos[:, None] * inv[None]
        cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]

        def rope(x):
            x1, x2, rest = x[..., : rd // 2], x[..., rd // 2: rd], x[..., rd:]
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], -1)

        q, k = rope(q), rope(k)
        K = torch.cat([st["k"], k], 0) if "k" in st else k
        V = torch.cat([st["v"], v], 0) if "v" in st else v
        st["k"], st["v"] = K, V
        S = K.shape[0]
        grp = nh // nkv
        Kx = K.repeat_interleave(grp, dim=1)
        Vx = V.repeat_interleave(grp, dim=1)
        sc = torch.einsum("thd,shd->hts", q, Kx) * hd ** -0.5
        mask = torch.arange(S)[None, :] <= (torch.arange(T)[:, None] + (S - T))
        sc = sc.masked_fill(~mask[None], float("-inf"))
        o = torch.einsum("hts,shd->thd", torch.softmax(sc, -1), Vx).reshape(T, nh * hd)
        o = o * torch.sigmoid(gate)
        return o @ self.W(pre + ".o_proj").T

    def moe(self, pre, m):
        c = self.cfg
        E, k = c["num_experts"], c["num_experts_per_tok"]
        logits = m @ self.W(pre + ".gate").T
        pr = torch.softmax(logits, -1)
        w, idx = torch.topk(pr, k, -1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(m)
        ex = [self.expert(pre + ".experts", e) for e in range(E)]
        for t in range(m.shape[0]):
            for j in range(k):
                g_, u_, d_ = ex[int(idx[t, j])]
                out[t] += w[t, j] * (d_ @ (F.silu(g_ @ m[t]) * (u_ @ m[t])))
        sg, su, sd = self.W(pre + ".shared_expert.gate_proj"), self.W(pre + ".shared_expert.up_proj"), self.W(pre + ".shared_expert.down_proj")
        sh = (F.silu(m @ sg.T) * (m @ su.T)) @ sd.T
        return out + torch.sigmoid(m @ self.W(pre + ".shared_expert_gate").T) * sh


def rel(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


def check(data, model_name, golden_name):
    sm = SpecModel(os.path.join(data, "models", model_name))
    g = os.path.join(data, "goldens", golden_name)
    res = {}
    lg = load_file(os.path.join(g, "logits.safetensors"))
    for L in (1, 7, 64, 320):
        out, _ = sm.forward(lg[f"len{L}.input_ids"])
        res[f"len{L}"] = rel(out, lg[f"len{L}.logits"].to(DT))
    d = load_file(os.path.join(g, "decode.safetensors"))
    out, st = sm.forward(d["prompt_ids"])
    res["prefill"] = rel(out, d["prefill_logits"].to(DT))
    steps = []
    for s, tok in enumerate(d["tokens"].tolist()):
        o, st = sm.forward(torch.tensor([tok]), st)
        steps.append(o[0])
    ref = torch.cat([d["step_logits"][1:], d["final_logits"][None]]).to(DT)
    res["decode_steps"] = rel(torch.stack(steps), ref)
    res["decode_greedy_same"] = bool(torch.equal(torch.stack([out[-1]] + steps[:-1]).argmax(-1).to(torch.int32), d["tokens"]))
    return res


if __name__ == "__main__":
    torch.set_num_threads(1)
    data = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "tests", "data")
    for m, g in (("tiny-bf16", "tiny-bf16"), ("tiny-w4g32", "tiny-w4g32"), ("tiny-w4g32-partial", "tiny-w4g32-partial"),
                 ("tiny-w4g32-fused", "tiny-w4g32")):
        print(m, json.dumps(check(data, m, g)), flush=True)
