#!/usr/bin/python3
"""Independent plain-PyTorch reference for sortedllama test fixtures.

Usage: /usr/bin/python3 tests/reference/make_reference.py tests/data

Writes (deterministic, torch.manual_seed(0)):
  ref_gqa/config.json, ref_gqa/model.safetensors          tiny random GQA LLaMA (F32)
  ref_gqa_sharded/{config.json, model-0000{1,2}-of-00002.safetensors,
                   model.safetensors.index.json}           same weights, 2 shards
  ref_gqa/expected.safetensors, ref_gqa/expected.json     logits/NLL/grads per exit

The forward pass mirrors HF LlamaForCausalLM (rotate-half RoPE, GQA with
repeat_interleave, RMSNorm, SwiGLU), computed in float64 from the stored F32
weights. "Exit k" = residual stream after the first k layers -> shared
model.norm -> shared lm_head. Only torch, numpy-free stdlib json/struct used.
"""
import json
import math
import os
import struct
import sys

import torch

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 80,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000.0,
    "vocab_size": 96,
    "max_position_embeddings": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "hidden_act": "silu",
}
GRAD_NAMES = ["model.layers.1.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"]

# ---------------------------------------------------------------- safetensors I/O
DTYPES = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "I64": (torch.int64, 8)}
TORCH_TO_ST = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def write_safetensors(path, tensors):
    """tensors: dict name -> torch tensor (insertion order = data order)."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((-len(hjson)) % 8)  # pad header to a multiple of 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    return off  # bytes of tensor data


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode())
    data, out = raw[8 + n:], {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dt, _ = DTYPES[meta["dtype"]]
        b, e = meta["data_offsets"]
        buf = bytearray(data[b:e])
        out[name] = torch.frombuffer(buf, dtype=dt).reshape(meta["shape"]) if e > b \
            else torch.empty(meta["shape"], dtype=dt)
    return out


# ---------------------------------------------------------------- model
def make_weights(cfg):
    """Random F32 weights with HF names, in HF order (embeddings, layers, norm, head)."""
    D, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = D // H
    lin = lambda *s: torch.randn(*s) * 0.15
    norm = lambda n: 1.0 + torch.randn(n) * 0.1
    w = {"model.embed_tokens.weight": lin(V, D)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(D)
        w[p + "self_attn.q_proj.weight"] = lin(H * hd, D)
        w[p + "self_attn.k_proj.weight"] = lin(KV * hd, D)
        w[p + "self_attn.v_proj.weight"] = lin(KV * hd, D)
        w[p + "self_attn.o_proj.weight"] = lin(D, H * hd)
        w[p + "post_attention_layernorm.weight"] = norm(D)
        w[p + "mlp.gate_proj.weight"] = lin(I, D)
        w[p + "mlp.up_proj.weight"] = lin(I, D)
        w[p + "mlp.down_proj.weight"] = lin(D, I)
    w["model.norm.weight"] = norm(D)
    w["lm_head.weight"] = lin(V, D)
    return {k: v.float().contiguous() for k, v in w.items()}


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward_exits(w, cfg, tokens, attn_mask):
    """Returns list of logits [B,T,V] for exits k=1..L (float64)."""
    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, n_rep = D // H, cfg["rms_norm_eps"], H // KV
    B, T = tokens.shape
    dt = w["lm_head.weight"].dtype

    # RoPE tables (HF rotate-half convention), positions 0..T-1 for every row.
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=dt) / hd))
    freqs = torch.arange(T, dtype=dt)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()  # [T, hd]

    # Additive mask [B,1,T,T]: causal AND key is a real token. Query rows at pad
    # positions still see earlier real keys (BOS at 0 is always real) -> no NaN.
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    allowed = causal[None, None] & attn_mask.bool()[:, None, None, :]
    bias = torch.zeros(B, 1, T, T, dtype=dt).masked_fill(~allowed, float("-inf"))

    x = w["model.embed_tokens.weight"][tokens]  # [B,T,D]
    exits = []
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(B, T, KV, hd).transpose(1, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(B, T, KV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA: kv head j serves query heads j*n_rep .. (j+1)*n_rep-1
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + bias
        probs = torch.softmax(scores, dim=-1)
        a = (probs @ v).transpose(1, 2).reshape(B, T, H * hd)
        x = x + a @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T)
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g * u) @ w[p + "mlp.down_proj.weight"].T
        # exit k = l+1: shared final norm + shared lm_head
        exits.append(rms_norm(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T)
    return exits


def next_token_nll(logits, tokens, attn_mask):
    """Mean CE predicting tokens[:,t+1] from t over pairs where t and t+1 are real."""
    V = logits.shape[-1]
    valid = (attn_mask[:, :-1] * attn_mask[:, 1:]).bool()
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -lp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return nll[valid].mean()


# ---------------------------------------------------------------- main
def main(out_dir):
    torch.manual_seed(0)
    cfg = CONFIG
    V, L = cfg["vocab_size"], cfg["num_hidden_layers"]
    w32 = make_weights(cfg)

    # Inputs: row0 = BOS + 9 randoms; row1 = BOS + 6 randoms + 3 pads (id 0).
    T = 10
    tokens = torch.zeros(2, T, dtype=torch.int64)
    attn_mask = torch.zeros(2, T, dtype=torch.int64)
    tokens[:, 0] = cfg["bos_token_id"]
    tokens[0, 1:] = torch.randint(3, V, (T - 1,))
    tokens[1, 1:7] = torch.randint(3, V, (6,))
    attn_mask[0, :] = 1
    attn_mask[1, :7] = 1

    # Model files (single + sharded).
    gqa = os.path.join(out_dir, "ref_gqa")
    shd = os.path.join(out_dir, "ref_gqa_sharded")
    os.makedirs(gqa, exist_ok=True)
    os.makedirs(shd, exist_ok=True)
    for d in (gqa, shd):
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    write_safetensors(os.path.join(gqa, "model.safetensors"), w32)

    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    first = lambda n: n == "model.embed_tokens.weight" or n.startswith(("model.layers.0.", "model.layers.1."))
    shards = [{k: v for k, v in w32.items() if first(k)}, {k: v for k, v in w32.items() if not first(k)}]
    total, weight_map = 0, {}
    for fname, sh in zip(names, shards):
        total += write_safetensors(os.path.join(shd, fname), sh)
        weight_map.update({k: fname for k in sh})
    with open(os.path.join(shd, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    # Reference forward/backward in float64 from the exact stored F32 values.
    w64 = {k: v.double().requires_grad_(k in GRAD_NAMES) for k, v in w32.items()}
    exits = forward_exits(w64, cfg, tokens, attn_mask)
    nlls = [next_token_nll(lg, tokens, attn_mask) for lg in exits]
    soft_loss = torch.stack(nlls).mean()
    soft_loss.backward()
    for lg in exits:
        assert torch.isfinite(lg).all(), "non-finite logits"

    expected = {"tokens": tokens, "attention_mask": attn_mask}
    for k, lg in enumerate(exits, 1):
        expected[f"logits_exit{k}"] = lg.detach().float()
    for n in GRAD_NAMES:
        expected["grad." + n] = w64[n].grad.float()
    write_safetensors(os.path.join(gqa, "expected.safetensors"), expected)
    meta = {
        "nll": {str(k): float(v) for k, v in enumerate(nlls, 1)},
        "soft_loss": float(soft_loss),
        "atol_logits": 1e-4,
        "notes": ("Computed in float64 from the stored F32 weights by "
                  "tests/reference/make_reference.py (plain PyTorch, HF LlamaForCausalLM "
                  "semantics: rotate-half RoPE theta=1000, GQA repeat_interleave, RMSNorm, "
                  "SwiGLU). Exit k = residual after first k layers -> shared model.norm -> "
                  "shared lm_head. NLL = natural-log next-token CE averaged over all (t,t+1) "
                  "pairs with both tokens real (pooled over the batch; 9+6=15 pairs). "
                  "soft_loss = mean of the 4 exit NLLs; grad.* = d soft_loss / d weight. "
                  "Row 1 is right-padded (pad id 0, attention_mask 0); logits at pad "
                  "positions are finite but should not be compared."),
    }
    with open(os.path.join(gqa, "expected.json"), "w") as f:
        json.dump(meta, f, indent=2)

    # Self-check: everything written round-trips through our own reader.
    for path, ref in [(os.path.join(gqa, "model.safetensors"), w32),
                      (os.path.join(gqa, "expected.safetensors"), expected)] + \
                     [(os.path.join(shd, n), s) for n, s in zip(names, shards)]:
        got = read_safetensors(path)
        assert list(got) == list(ref), path
        for k in ref:
            assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), (path, k)
    assert sorted(weight_map) == sorted(w32)

    print("ok: %d weights, nll=%s soft_loss=%.6f, total_size=%d" % (
        len(w32), ["%.4f" % float(v) for v in nlls], float(soft_loss), total))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data")
