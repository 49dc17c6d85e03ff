#!/usr/bin/python3
"""One random LLaMA in Meta's and llama2.c's layouts, for tests/cli/convert_formats.sh.

Usage: /usr/bin/python3 tests/reference/make_meta_fixture.py OUT TOKENIZER TEXT

Writes (deterministic, torch.manual_seed(0)), all holding the same float32 weights:
  OUT/meta1/      params.json (vocab_size 512) + consolidated.00.pth: a state dict (OrderedDict
                  with _metadata) that also carries LLaMA 1's rope.freqs
  OUT/meta2/      params.json (vocab_size -1) + consolidated.00.pth, consolidated.01.pth: split as
                  Meta's tensor parallelism splits them (wq/wk/wv/w1/w3/output by rows, wo/w2 and
                  tok_embeddings by columns, norms in both)
  OUT/meta_bf16/  meta1's weights rounded to bfloat16
  OUT/model.bin   the llama2.c version-0 checkpoint of the same model
  OUT/expected.json  {"tokens": BOS + TEXT's pieces, "nll": mean next-token NLL}, from Meta's own
                  forward pass (interleaved complex RoPE, as Meta's model.py), float64
"""
import collections
import json
import math
import os
import struct
import subprocess
import sys

import torch

PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 512, "multiple_of": 32,
          "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 10000.0}
MAX_SEQ_LEN = 64  # llama2.c's header field; Meta's files do not record one


def ffn_dim(p):
    hidden = int(p["ffn_dim_multiplier"] * int(2 * 4 * p["dim"] / 3))
    return p["multiple_of"] * ((hidden + p["multiple_of"] - 1) // p["multiple_of"])


def make_weights(p):
    D, H, KV, V, I = p["dim"], p["n_heads"], p["n_kv_heads"], p["vocab_size"], ffn_dim(p)
    hd = D // H
    lin = lambda *s: torch.randn(*s) * 0.15
    norm = lambda n: 1.0 + torch.randn(n) * 0.1
    w = collections.OrderedDict([("tok_embeddings.weight", lin(V, D))])
    for l in range(p["n_layers"]):
        a = f"layers.{l}."
        w[a + "attention.wq.weight"] = lin(H * hd, D)
        w[a + "attention.wk.weight"] = lin(KV * hd, D)
        w[a + "attention.wv.weight"] = lin(KV * hd, D)
        w[a + "attention.wo.weight"] = lin(D, H * hd)
        w[a + "feed_forward.w1.weight"] = lin(I, D)
        w[a + "feed_forward.w2.weight"] = lin(D, I)
        w[a + "feed_forward.w3.weight"] = lin(I, D)
        w[a + "attention_norm.weight"] = norm(D)
        w[a + "ffn_norm.weight"] = norm(D)
    w["norm.weight"] = norm(D)
    w["output.weight"] = lin(V, D)
    return w


def split_dim(name):
    if name.endswith("norm.weight"):
        return None
    if name.endswith(("wo.weight", "w2.weight")) or name == "tok_embeddings.weight":
        return 1
    return 0


def meta_forward(w, p, tokens):
    """Meta's model.py in float64: RoPE on (2i, 2i+1) pairs as complex numbers."""
    D, H, KV = p["dim"], p["n_heads"], p["n_kv_heads"]
    hd, T, eps = D // H, len(tokens), p["norm_eps"]
    w = {k: v.double() for k, v in w.items()}
    freqs = 1.0 / (p["rope_theta"] ** (torch.arange(0, hd, 2).double() / hd))
    cis = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), freqs))
    rms = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    def rope(x):  # [T, heads, hd]
        c = torch.view_as_complex(x.reshape(T, x.shape[1], hd // 2, 2).contiguous())
        return torch.view_as_real(c * cis[:, None, :]).flatten(2)

    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    x = w["tok_embeddings.weight"][torch.tensor(tokens)]
    for l in range(p["n_layers"]):
        a = f"layers.{l}."
        h = rms(x, w[a + "attention_norm.weight"])
        q = rope((h @ w[a + "attention.wq.weight"].T).view(T, H, hd))
        k = rope((h @ w[a + "attention.wk.weight"].T).view(T, KV, hd)).repeat_interleave(H // KV, dim=1)
        v = (h @ w[a + "attention.wv.weight"].T).view(T, KV, hd).repeat_interleave(H // KV, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
        out = torch.einsum("hts,shd->thd", torch.softmax(scores, -1), v).reshape(T, D)
        x = x + out @ w[a + "attention.wo.weight"].T
        h = rms(x, w[a + "ffn_norm.weight"])
        x = x + (torch.nn.functional.silu(h @ w[a + "feed_forward.w1.weight"].T) *
                 (h @ w[a + "feed_forward.w3.weight"].T)) @ w[a + "feed_forward.w2.weight"].T
    return rms(x, w["norm.weight"]) @ w["output.weight"].T


def write_llama2c(path, w, p):
    D, L, V = p["dim"], p["n_layers"], p["vocab_size"]
    hd = D // p["n_heads"]
    stack = lambda key: torch.stack([w[f"layers.{l}.{key}"] for l in range(L)])
    arrays = [w["tok_embeddings.weight"], stack("attention_norm.weight"), stack("attention.wq.weight"),
              stack("attention.wk.weight"), stack("attention.wv.weight"), stack("attention.wo.weight"),
              stack("ffn_norm.weight"), stack("feed_forward.w1.weight"), stack("feed_forward.w2.weight"),
              stack("feed_forward.w3.weight"), w["norm.weight"], torch.zeros(2, MAX_SEQ_LEN, hd // 2),
              w["output.weight"]]
    with open(path, "wb") as f:
        # Negative vocab_size: a classifier of its own follows the other arrays.
        f.write(struct.pack("<7i", D, ffn_dim(p), L, p["n_heads"], p["n_kv_heads"], -V, MAX_SEQ_LEN))
        for a in arrays:
            f.write(a.float().contiguous().numpy().tobytes())


def write_meta(d, params, shards):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump(params, f)
    for i, sd in enumerate(shards):
        torch.save(sd, os.path.join(d, "consolidated.%02d.pth" % i))


def main(out, tokenizer, text):
    torch.manual_seed(0)
    p = PARAMS
    w = make_weights(p)

    sd = collections.OrderedDict(w)
    sd["rope.freqs"] = torch.randn(p["dim"] // p["n_heads"] // 2)
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    write_meta(os.path.join(out, "meta1"), p, [sd])
    halves = [{}, {}]
    for k, v in w.items():
        dim = split_dim(k)
        parts = [v, v] if dim is None else v.chunk(2, dim=dim)
        for s in range(2):
            halves[s][k] = parts[s].clone()
    write_meta(os.path.join(out, "meta2"), dict(p, vocab_size=-1), halves)
    write_meta(os.path.join(out, "meta_bf16"), p, [{k: v.bfloat16() for k, v in w.items()}])
    write_llama2c(os.path.join(out, "model.bin"), w, p)

    # spm_encode (Debian's sentencepiece tools); BOS is id 1 in LLaMA's and llama2.c's tokenizers.
    pieces = subprocess.run(["spm_encode", "--model=" + tokenizer, "--output_format=id"], input=text, text=True,
                            capture_output=True, check=True).stdout.split()
    tokens = [1] + [int(t) for t in pieces]
    logits = meta_forward(w, p, tokens)
    nll = -torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(tokens[1:])[:, None]).mean()
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"tokens": tokens, "nll": float(nll), "intermediate_size": ffn_dim(p)}, f)
    print("ok: %d tokens, nll %.6f, intermediate_size %d" % (len(tokens), float(nll), ffn_dim(p)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
