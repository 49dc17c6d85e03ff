"""Batch-1 fp32 decode speed of `sortedllama generate` against llama2.c's `runomp`, on the same weights.

Called by `scripts/bench_decoding.sh --vs-llama2c`. For each shape it writes a random-weight llama2.c
checkpoint (numpy), converts it with `sortedllama convert --from llama2c`, and runs both programs
greedily for the same number of new tokens, interleaved (llama2.c, sortedllama, llama2.c, ...), at
each thread count; ratios are medians over the pairs. The embedding rows of BOS (1) and EOS (2) are
zero, so both logits are 0 under the tied head and neither program stops early. Then sortedllama's
batched throughput (new tokens/s over a batch of prompts) against its own batch 1, interleaved too.
Writes OUT/decode_vs_llama2c.json and .md.
"""
import argparse
import datetime
import json
import os
import statistics
import struct
import subprocess
import sys

import numpy as np

from bench_machine import machine

SHAPES = {  # name: dim, hidden, layers, heads, kv heads, vocab
    "110M": (768, 2048, 12, 12, 12, 32000),
    "15M": (288, 768, 6, 6, 6, 32000),
}
PROMPT = "Once upon a time"


def write_llama2c(path, dim, hidden, layers, heads, kv_heads, vocab, seq_len=512, seed=0):
    """llama2.c version-0 checkpoint (FORMATS.md) with N(0, 0.02^2) weights and unit norms."""
    rng = np.random.default_rng(seed)
    kv_dim = dim * kv_heads // heads
    head = dim // heads

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    emb = w(vocab, dim)
    emb[1] = 0
    emb[2] = 0
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("7i", dim, hidden, layers, heads, kv_heads, vocab, seq_len))
        for a in (emb, np.ones((layers, dim), np.float32), w(layers, dim, dim), w(layers, kv_dim, dim),
                  w(layers, kv_dim, dim), w(layers, dim, dim), np.ones((layers, dim), np.float32),
                  w(layers, hidden, dim), w(layers, dim, hidden), w(layers, hidden, dim),
                  np.ones(dim, np.float32), np.zeros((2, seq_len, head // 2), np.float32)):  # freq_cis real, imag (unused)
            f.write(a.tobytes())
    os.replace(tmp, path)


def run(cmd, env=None):
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit("failed: " + " ".join(cmd) + "\n" + res.stderr[-2000:])
    return res


def llama2c_tok_s(args, model_bin, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # -n counts positions, the prompt's included: BOS + prompt tokens + new tokens.
    res = run([args.llama2c, model_bin, "-t", "0", "-n", str(args.new_tokens + 5), "-i", PROMPT,
               "-z", args.llama2c_tokenizer], env)
    line = [l for l in (res.stdout + res.stderr).splitlines() if l.startswith("achieved tok/s")]
    return float(line[-1].split(":")[1])


def sortedllama_tok_s(args, model_dir, threads, batch=1):
    prompts = os.path.join(args.work, f"prompts-{batch}.txt")
    with open(prompts, "w") as f:
        f.write("\n".join([PROMPT] * batch) + "\n")
    res = run([args.bin, "--threads", str(threads), "generate", "--model", model_dir, "--prompt-file", prompts,
               "--batch-size", str(batch), "--max-new-tokens", str(args.new_tokens), "--json"])
    rows = [json.loads(l) for l in res.stdout.splitlines() if l.strip()]
    new = sum(len(r["tokens"]) for r in rows)
    if new != batch * args.new_tokens:
        sys.exit(f"sortedllama stopped early: {new} of {batch * args.new_tokens} tokens")
    st = rows[0]["stats"]  # batch-level: the whole batch's decode time
    return 1000.0 * (new - batch) / st["decode_ms"]  # the first token of each row comes from the prefill


def interleaved(a, b, pairs):
    xs, ys = [], []
    for _ in range(pairs):
        xs.append(a())
        ys.append(b())
    return xs, ys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--llama2c", required=True, help="the built runomp binary")
    ap.add_argument("--llama2c-tokenizer", required=True)
    ap.add_argument("--tokenizer", required=True, help="the LLaMA 2 sentencepiece model")
    ap.add_argument("--work", required=True, help="directory for the checkpoints")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="8,32", help="batched throughput on the 110M shape")
    ap.add_argument("--shapes", default="110M,15M")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)

    rows, batched = [], []
    for name in args.shapes.split(","):
        dim, hidden, layers, heads, kv, vocab = SHAPES[name]
        model_bin = os.path.join(args.work, f"{name}.bin")
        model_dir = os.path.join(args.work, name)
        if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
            write_llama2c(model_bin, dim, hidden, layers, heads, kv, vocab)
            run([args.bin, "convert", "--from", "llama2c", "--input", model_bin, "--tokenizer", args.tokenizer,
                 "--out", model_dir])
        for t in map(int, args.threads.split(",")):
            base, ours = interleaved(lambda: llama2c_tok_s(args, model_bin, t),
                                     lambda: sortedllama_tok_s(args, model_dir, t), args.pairs)
            ratio = statistics.median(o / b for o, b in zip(ours, base))
            rows.append({"shape": name, "threads": t, "llama2c_tok_s": base, "sortedllama_tok_s": ours, "ratio": ratio})
            print(f"{name} {t} thread(s): llama2.c {statistics.median(base):.1f} tok/s, sortedllama "
                  f"{statistics.median(ours):.1f} tok/s, ratio {ratio:.2f}x", flush=True)
        if name == "110M":
            for b in map(int, filter(None, args.batches.split(","))):
                one, many = interleaved(lambda: sortedllama_tok_s(args, model_dir, 2),
                                        lambda: sortedllama_tok_s(args, model_dir, 2, b), args.pairs)
                ratio = statistics.median(m / o for m, o in zip(many, one))
                batched.append({"shape": name, "threads": 2, "batch": b, "batch1_tok_s": one, "batch_tok_s": many,
                                "ratio": ratio})
                print(f"{name} batch {b}: {statistics.median(many):.1f} tok/s vs batch 1 "
                      f"{statistics.median(one):.1f}, ratio {ratio:.2f}x", flush=True)

    info = {"benchmark": "decode_vs_llama2c", "date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(args.bin), "new_tokens": args.new_tokens, "pairs": args.pairs, "batch1": rows,
            "batched": batched}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "decode_vs_llama2c.json.tmp"), "w") as f:
        json.dump(info, f, indent=1)
    os.replace(os.path.join(args.out, "decode_vs_llama2c.json.tmp"), os.path.join(args.out, "decode_vs_llama2c.json"))
    m = info["machine"]
    md = ["# Decode speed against llama2.c", "",
          f"{info['date']}; {m['cpu']}, {m['cores']} cores; {m['sortedllama']}", "",
          f"Random weights, greedy, fp32, {args.new_tokens} new tokens, the same weights in both programs "
          f"(`scripts/bench_decoding.sh --vs-llama2c`). Runs interleaved (llama2.c, sortedllama, ...), "
          f"{args.pairs} pairs; the ratio is the median of the pairs' ratios.", "",
          "| shape | threads | llama2.c tok/s (median) | sortedllama tok/s (median) | ratio |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['shape']} | {r['threads']} | {statistics.median(r['llama2c_tok_s']):.1f} | "
                  f"{statistics.median(r['sortedllama_tok_s']):.1f} | {r['ratio']:.2f}x |")
    if batched:
        md += ["", "Batched decoding (sortedllama, 2 threads, one batch of identical prompts, new tokens/s over the batch; "
               "interleaved with batch 1):", "", "| shape | batch | tok/s (median) | batch 1 tok/s (median) | ratio |",
               "|---|---:|---:|---:|---:|"]
        for r in batched:
            md.append(f"| {r['shape']} | {r['batch']} | {statistics.median(r['batch_tok_s']):.1f} | "
                      f"{statistics.median(r['batch1_tok_s']):.1f} | {r['ratio']:.2f}x |")
    with open(os.path.join(args.out, "decode_vs_llama2c.md.tmp"), "w") as f:
        f.write("\n".join(md) + "\n")
    os.replace(os.path.join(args.out, "decode_vs_llama2c.md.tmp"), os.path.join(args.out, "decode_vs_llama2c.md"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
