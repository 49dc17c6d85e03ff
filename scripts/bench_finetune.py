#!/usr/bin/python3
"""Training throughput and peak memory: sortedllama finetune (SFT, SoFT) against a plain PyTorch loop.

Driver (run by scripts/bench_finetune.sh): for each setting, writes a data slice and a finetune
config for a LLaMA-shaped model initialised from scratch, then runs `sortedllama finetune` and the
plain PyTorch loop below, SFT and SoFT, each in its own process (peak RSS from wait4), interleaved
(sortedllama, PyTorch, sortedllama, PyTorch, ...) --repeat times; medians count. Tokens/s counts
non-padding tokens over the timed steps (the first --skip steps are warm-up and not timed). It also
times the GEMMs of one step's matrix shapes on their own (torch.mm, same threads, in the same run)
and reports each implementation's model FLOP/s as a fraction of that GEMM speed, and sortedllama's
time per phase (metrics.jsonl phase_ms). Writes OUT/finetune.json and OUT/finetune.md.

Settings: `dense` is text sequences of --max-seq-len tokens with every position labelled, batch 8,
8 heads over 4 KV heads; `alpaca` is real Alpaca records, response tokens labelled, batch 4.

The PyTorch loop is what a researcher would write first: HF-style LLaMA in float32, cross-entropy
on each exit's logits, AdamW, gradient clipping. To be fair where only some positions are labelled,
it computes the head on the labelled positions only (as sortedllama does); SoFT keeps every exit's
logits alive until one backward.
"""
import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time

from bench_machine import machine

BASE_SHAPE = {  # LLaMA-shaped, small enough for a CPU: 8 layers, dim 256, LLaMA 2 vocabulary
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 8,
    "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}
SETTINGS = {  # name -> data format, batch size, attention heads / KV heads, default steps (untimed)
    "dense": {"format": "text", "batch_size": 8, "heads": (8, 4), "steps": 3, "skip": 1},
    "alpaca": {"format": "alpaca", "batch_size": 4, "heads": (4, 4), "steps": 6, "skip": 2},
}


def shape_of(setting):
    h, kv = SETTINGS[setting]["heads"]
    return dict(BASE_SHAPE, num_attention_heads=h, num_key_value_heads=kv)


PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


# ------------------------------------------------------------------ plain PyTorch worker
def worker(args):
    import torch
    import torch.nn.functional as F
    import sentencepiece as spm

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    c = shape_of(args.setting)
    D, H, KV, L, V = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], \
        c["num_hidden_layers"], c["vocab_size"]
    hd = D // H

    def p(*shape):  # N(0, 0.02) like sortedllama's `init`
        return torch.nn.Parameter(torch.randn(*shape) * 0.02)

    params = {"embed": p(V, D), "norm": torch.nn.Parameter(torch.ones(D)), "head": p(V, D)}
    for i in range(L):
        params.update({f"{i}.q": p(H * hd, D), f"{i}.k": p(KV * hd, D), f"{i}.v": p(KV * hd, D),
                       f"{i}.o": p(D, H * hd), f"{i}.gate": p(c["intermediate_size"], D),
                       f"{i}.up": p(c["intermediate_size"], D), f"{i}.down": p(D, c["intermediate_size"]),
                       f"{i}.n1": torch.nn.Parameter(torch.ones(D)), f"{i}.n2": torch.nn.Parameter(torch.ones(D))})

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c["rms_norm_eps"]))

    def rope(x, cos, sin):  # rotate-half, x: [B, h, T, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    def forward(tokens, mask, labelled, exits):
        B, T = tokens.shape
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(T).float(), inv)
        cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allowed = causal[None, None] & mask[:, None, None, :].bool()
        bias = torch.zeros(B, 1, T, T).masked_fill(~allowed, float("-inf"))
        x = params["embed"][tokens]
        out = []
        for i in range(L):
            h = rms(x, params[f"{i}.n1"])
            q = (h @ params[f"{i}.q"].t()).view(B, T, H, hd).transpose(1, 2)
            k = (h @ params[f"{i}.k"].t()).view(B, T, KV, hd).transpose(1, 2).repeat_interleave(H // KV, 1)
            v = (h @ params[f"{i}.v"].t()).view(B, T, KV, hd).transpose(1, 2).repeat_interleave(H // KV, 1)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1)
            x = x + (att @ v).transpose(1, 2).reshape(B, T, D) @ params[f"{i}.o"].t()
            h = rms(x, params[f"{i}.n2"])
            x = x + (F.silu(h @ params[f"{i}.gate"].t()) * (h @ params[f"{i}.up"].t())) @ params[f"{i}.down"].t()
            if i + 1 in exits:  # [N, V] per exit: the head on the labelled positions only
                out.append(rms(x[labelled], params["norm"]) @ params["head"].t())
        return out

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    examples = []
    for r in json.load(open(args.data)):
        if "text" in r:  # every token after the first is a target
            ids = ([sp.bos_id()] + sp.encode(r["text"]) + [sp.eos_id()])[: args.max_seq_len]
            examples.append((ids, [-100] + ids[1:]))
            continue
        tmpl = PROMPT_INPUT if r.get("input") else PROMPT_NO_INPUT
        prompt = tmpl.format(**r)
        ids = [sp.bos_id()] + sp.encode(prompt + r["output"]) + [sp.eos_id()]
        n_prompt = 1 + len(sp.encode(prompt))
        if n_prompt >= args.max_seq_len:
            continue
        ids = ids[: args.max_seq_len]
        labels = [-100] * n_prompt + ids[n_prompt:]
        examples.append((ids, labels))
    random.Random(args.seed).shuffle(examples)

    exits = set(range(1, L + 1)) if args.method == "soft" else {L}
    opt = torch.optim.AdamW(params.values(), lr=2e-5, weight_decay=0.0)
    timed_tokens, timed_targets, timed_s, losses = 0, 0, 0.0, []
    for step in range(args.steps):
        batch = [examples[(step * args.batch_size + b) % len(examples)] for b in range(args.batch_size)]
        T = max(len(ids) for ids, _ in batch)
        tokens = torch.zeros(len(batch), T, dtype=torch.long)
        labels = torch.full((len(batch), T), -100, dtype=torch.long)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        for b, (ids, lab) in enumerate(batch):
            tokens[b, : len(ids)] = torch.tensor(ids)
            labels[b, : len(ids) - 1] = torch.tensor(lab[1:])
            mask[b, : len(ids)] = 1
        t0 = time.perf_counter()
        labelled = labels >= 0
        # bf16: the usual mixed precision, fp32 weights and optimizer with bf16 matrix products (autocast).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = forward(tokens, mask, labelled, exits)
            loss = sum(F.cross_entropy(lg.float(), labels[labelled]) for lg in logits) / len(logits)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= args.skip:
            timed_tokens += int(mask.sum())
            timed_targets += int((labels >= 0).sum())
            timed_s += dt
        print(f"python {args.method} step {step + 1}/{args.steps} loss {loss.item():.3f} {dt * 1000:.0f} ms",
              file=sys.stderr, flush=True)
    print(json.dumps({"tokens_per_s": timed_tokens / timed_s, "ms_per_step": 1000 * timed_s / (args.steps - args.skip),
                      "tokens_per_step": timed_tokens / (args.steps - args.skip),
                      "targets_per_step": timed_targets / (args.steps - args.skip), "first_loss": losses[0]}))


# ------------------------------------------------------------------ GEMM speed of the step's shapes
def matrix_products(c, batch_size, tokens, targets, n_exits):
    """(count, kind, dims) of one training step's matrix products, forward and backward: each
    linear map's forward, input-gradient and weight-gradient GEMM over the step's tokens, attention's
    two batched products (and their gradients) over the mean sequence length, and each exit's head
    over the labelled positions. kind "mm": (M, K, N); "bmm": (batch, M, K, N)."""
    D, I, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = D // H
    M, T = int(round(tokens)), max(1, int(round(tokens / batch_size)))
    out = []
    for k, n in ((D, H * hd), (D, KV * hd), (D, KV * hd), (H * hd, D), (D, I), (D, I), (I, D)):
        out += [(L, "mm", (M, k, n)), (L, "mm", (M, n, k)), (L, "mm", (n, M, k))]
    bh = batch_size * H  # scores q k^T and probabilities @ v, each with two gradient products
    out += [(L, "bmm", (bh, T, hd, T)), (L, "bmm", (bh, T, T, hd)), (L, "bmm", (bh, hd, T, T)),
            (L, "bmm", (bh, T, T, hd)), (L, "bmm", (bh, T, hd, T)), (L, "bmm", (bh, hd, T, T))]
    N = int(round(targets))
    out += [(n_exits, "mm", (N, D, V)), (n_exits, "mm", (N, V, D)), (n_exits, "mm", (V, N, D))]
    return out


def product_flops(kind, dims):
    return 2 * math.prod(dims)


def gemm_worker(args):
    """Times each distinct product of --products (JSON) with torch.mm/bmm; prints seconds per product."""
    import torch
    torch.set_num_threads(args.threads)
    times = {}
    for _, kind, dims in json.loads(args.products):
        key = f"{kind}:{dims}"
        if key in times:
            continue
        if kind == "mm":
            a, b = torch.randn(dims[0], dims[1]), torch.randn(dims[1], dims[2])
            op = lambda: torch.mm(a, b)
        else:
            a, b = torch.randn(dims[0], dims[1], dims[2]), torch.randn(dims[0], dims[2], dims[3])
            op = lambda: torch.bmm(a, b)
        op()
        runs = []
        while len(runs) < 3 or (sum(runs) < 0.2 and len(runs) < 50):
            t0 = time.perf_counter()
            op()
            runs.append(time.perf_counter() - t0)
        times[key] = sorted(runs)[len(runs) // 2]
    print(json.dumps(times))


# ------------------------------------------------------------------ driver
# ------------------------------------------------------------------ driver
# The OpenBLAS kernel sortedllama runs with (from its --version line); the Python processes get it too.
BLAS_KERNEL = {}


def blas_kernel_of(version):
    """The core name in OpenBLAS's configuration string ("... NO_AFFINITY SkylakeX MAX_THREADS=64"), or None."""
    m = re.search(r"OpenBLAS [^(;]*? (\w+) MAX_THREADS", version)
    return m.group(1) if m else None


def run_measured(cmd, stdout_path):
    """Runs cmd, returns (exit code, peak RSS in MiB, wall seconds). Every run gets the OpenMP wait
    policy that sortedllama picks for itself (PASSIVE), so that the PyTorch loop is not slowed by
    OpenMP threads spinning against OpenBLAS's, and the OpenBLAS kernel sortedllama uses: Debian's
    OpenBLAS takes recent Xeons for SSE3 machines, which would leave PyTorch a 4x slower GEMM.
    A user's own OPENBLAS_CORETYPE or OMP_WAIT_POLICY wins."""
    t0 = time.perf_counter()
    env = dict(BLAS_KERNEL, **os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(stdout_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024.0, time.perf_counter() - t0


def dense_texts(alpaca, tokenizer, min_tokens, count):
    """`count` texts of at least `min_tokens` tokens, each Alpaca records joined end to end."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    texts, parts = [], []
    for r in alpaca:
        parts += [r["instruction"], r.get("input", ""), r["output"]]
        text = "\n".join(p for p in parts if p)
        if len(text) > 3 * min_tokens and len(sp.encode(text)) >= min_tokens:
            texts.append({"text": text})
            parts = []
            if len(texts) == count:
                return texts
    sys.exit(f"error: only {len(texts)} texts of {min_tokens} tokens in the Alpaca file")


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def run_sortedllama(args, bin_path, cfg_path, work, name, method, skip, extra=(), sets=()):
    out_dir = os.path.join(work, name)
    log = out_dir + ".out"
    cmd = [bin_path, "--threads", str(args.threads), "finetune", "--config", cfg_path,
           "--set", f"method={method}", "--set", f"out_dir={out_dir}", *sets]
    if extra:  # ranks share the cores; wait4 reports the largest rank's peak RSS
        cmd = [bin_path, "--threads", str(max(1, args.threads // 2)), "launch", "--nproc", "2", "--", "finetune",
               *extra, "--config", cfg_path, "--set", f"method={method}", "--set", f"out_dir={out_dir}"]
    rc, rss, _ = run_measured(cmd, log)
    if rc != 0:
        sys.exit(f"error: {name} failed (exit {rc}); its output is in {log}")
    steps = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]
    steps = [s for s in steps if s.get("type") == "train" and s["step"] > skip]
    ms = sum(s["ms_per_step"] for s in steps)
    tok = sum(s["tokens"] for s in steps)
    res = {"tokens_per_s": tok / (ms / 1000), "ms_per_step": ms / len(steps), "tokens_per_step": tok / len(steps),
           "peak_rss_mib": rss}
    if all("phase_ms" in s for s in steps):
        res["phase_ms"] = {k: sum(s["phase_ms"][k] for s in steps) / len(steps) for k in steps[0]["phase_ms"]}
    return res


def run_pytorch(args, data, work, name, setting, method, steps, skip, precision="fp32"):
    log = os.path.join(work, name + ".out")
    rc, rss, _ = run_measured([sys.executable, __file__, "--worker", method, "--precision", precision,
                               "--setting", setting, "--data", data,
                               "--tokenizer", args.tokenizer, "--steps", str(steps), "--skip", str(skip),
                               "--batch-size", str(SETTINGS[setting]["batch_size"]), "--max-seq-len",
                               str(args.max_seq_len), "--threads", str(args.threads), "--seed", str(args.seed)], log)
    if rc != 0:
        sys.exit(f"error: {name} failed (exit {rc}); its output is in {log}")
    return dict(json.loads(open(log).read().strip().splitlines()[-1]), peak_rss_mib=rss)


def bench_setting(args, setting, work, alpaca):
    st = SETTINGS[setting]
    steps, skip = args.steps or st["steps"], args.skip if args.skip is not None else st["skip"]
    shape, batch = shape_of(setting), st["batch_size"]
    data = os.path.join(work, f"{setting}.json")
    records = dense_texts(alpaca, args.tokenizer, args.max_seq_len, 4 * batch) if setting == "dense" \
        else alpaca[: args.records]
    json.dump(records, open(data, "w"))
    cfg = {"init": shape, "tokenizer": args.tokenizer, "exits": "all", "data": {
        "train": data, "format": st["format"], "max_seq_len": args.max_seq_len},
        "train": {"batch_size": batch, "lr": 2e-5, "max_steps": steps, "seed": args.seed, "warmup_ratio": 0.0},
        "log": {"every": 1}, "save": {"every": 0}}
    cfg_path = os.path.join(work, f"{setting}-config.json")
    json.dump(cfg, open(cfg_path, "w"), indent=1)

    impls = [("sortedllama", args.bin, ()), ("pytorch", None, "fp32")]
    if args.baseline_bin:
        impls.insert(1, ("sortedllama-baseline", args.baseline_bin, ()))
    if args.bf16:
        impls.insert(1, ("sortedllama-bf16", args.bin, ("--set", "train.precision=bf16")))
        impls.append(("pytorch-bf16", None, "bf16"))
    runs = {}  # (impl, method) -> one result per repeat
    for rep in range(args.repeat):
        for method in ("sft", "soft"):
            for impl, bin_path, sets in impls:
                name = f"{setting}-{impl}-{method}-{rep}"
                print(f"== {name}: {steps} steps (the first {skip} untimed)", file=sys.stderr, flush=True)
                res = run_pytorch(args, data, work, name, setting, method, steps, skip, sets) if bin_path is None \
                    else run_sortedllama(args, bin_path, cfg_path, work, name, method, skip, sets=sets)
                runs.setdefault((impl, method), []).append(res)
    if args.scaling:  # data parallel on this machine: 2 Gloo ranks, replicated and sharded optimizer
        for impl, zero in (("sortedllama-2ranks", 0), ("sortedllama-2ranks-zero2", 2)):
            runs[(impl, "soft")] = [run_sortedllama(args, args.bin, cfg_path, work, f"{setting}-{impl}", "soft", skip,
                                                    ("--set", f"dist.zero_stage={zero}"))]

    # Model FLOPs per step from the PyTorch runs' token counts (both see batches of the same kind).
    py = runs[("pytorch", "sft")]
    tokens, targets = median([r["tokens_per_step"] for r in py]), median([r["targets_per_step"] for r in py])
    L = shape["num_hidden_layers"]
    products = {m: matrix_products(shape, batch, tokens, targets, L if m == "soft" else 1) for m in ("sft", "soft")}
    print(f"== {setting}: GEMMs of one step's shapes", file=sys.stderr, flush=True)
    gemm_log = os.path.join(work, f"{setting}-gemm.out")
    rc, _, _ = run_measured([sys.executable, __file__, "--gemm", "--products", json.dumps(products["soft"]),
                             "--tokenizer", args.tokenizer, "--threads", str(args.threads)], gemm_log)
    if rc != 0:
        sys.exit(f"error: the GEMM timing failed (exit {rc}); its output is in {gemm_log}")
    gemm_s = json.loads(open(gemm_log).read().strip().splitlines()[-1])
    flops = {m: sum(n * product_flops(k, d) for n, k, d in p) for m, p in products.items()}
    gemm_gflops = {m: flops[m] / sum(n * gemm_s[f"{k}:{list(d)}"] for n, k, d in p) / 1e9 for m, p in products.items()}

    rows = []
    for (impl, method), rs in runs.items():
        ms = median([r["ms_per_step"] for r in rs])
        achieved = flops[method] / (ms / 1000) / 1e9 * median([r["tokens_per_step"] for r in rs]) / tokens
        row = {"impl": impl, "method": method, "runs": len(rs),
               "tokens_per_s": round(median([r["tokens_per_s"] for r in rs]), 1), "ms_per_step": round(ms, 1),
               "peak_rss_mib": round(median([r["peak_rss_mib"] for r in rs]), 1),
               "model_gflop_per_step": round(flops[method] / 1e9, 1), "achieved_gflops": round(achieved, 1),
               "gemm_gflops_same_shapes": round(gemm_gflops[method], 1),
               "fraction_of_gemm_speed": round(achieved / gemm_gflops[method], 3)}
        if all("phase_ms" in r for r in rs):
            row["phase_ms"] = {k: round(median([r["phase_ms"][k] for r in rs]), 1) for k in rs[0]["phase_ms"]}
        rows.append(row)

    def paired(a, b, key="tokens_per_s"):  # median over repeats of the ratio within each interleaved pair
        return round(median([x[key] / y[key] for x, y in zip(runs[a], runs[b])]), 3)

    summary = {
        "sortedllama_vs_pytorch_speed_sft": paired(("sortedllama", "sft"), ("pytorch", "sft")),
        "sortedllama_vs_pytorch_speed_soft": paired(("sortedllama", "soft"), ("pytorch", "soft")),
        "soft_over_sft_matrix_flops": round(flops["soft"] / flops["sft"], 3),
        "sortedllama_soft_over_sft_step_time": paired(("sortedllama", "soft"), ("sortedllama", "sft"), "ms_per_step"),
        "pytorch_soft_over_sft_step_time": paired(("pytorch", "soft"), ("pytorch", "sft"), "ms_per_step"),
        "sortedllama_soft_rss_over_sft": paired(("sortedllama", "soft"), ("sortedllama", "sft"), "peak_rss_mib"),
        "pytorch_soft_rss_over_sft": paired(("pytorch", "soft"), ("pytorch", "sft"), "peak_rss_mib"),
    }
    if args.baseline_bin:
        for m in ("sft", "soft"):
            summary[f"sortedllama_vs_baseline_speed_{m}"] = paired(("sortedllama", m), ("sortedllama-baseline", m))
            summary[f"baseline_vs_pytorch_speed_{m}"] = paired(("sortedllama-baseline", m), ("pytorch", m))
    if args.bf16:
        for m in ("sft", "soft"):
            summary[f"bf16_vs_fp32_speed_{m}"] = paired(("sortedllama-bf16", m), ("sortedllama", m))
            summary[f"bf16_vs_fp32_rss_{m}"] = paired(("sortedllama-bf16", m), ("sortedllama", m), "peak_rss_mib")
            summary[f"sortedllama_vs_pytorch_speed_bf16_{m}"] = paired(("sortedllama-bf16", m), ("pytorch-bf16", m))
    if args.scaling:
        one = runs[("sortedllama", "soft")][-1]
        for impl in ("sortedllama-2ranks", "sortedllama-2ranks-zero2"):
            r = runs[(impl, "soft")][0]
            summary[f"{impl}_speed_vs_1_process"] = round(r["tokens_per_s"] / one["tokens_per_s"], 3)
            summary[f"{impl}_rss_per_rank_vs_1_process"] = round(r["peak_rss_mib"] / one["peak_rss_mib"], 3)
    setup = {"model": shape, "batch_size": batch, "max_seq_len": args.max_seq_len, "steps": steps, "untimed_steps": skip,
             "repeat": args.repeat, "threads": args.threads, "data": st["format"], "exits_soft": f"all {L}",
             "tokens_per_step": tokens, "targets_per_step": targets}
    return {"setting": setting, "setup": setup, "rows": rows, "summary": summary}


def markdown(result):
    m = result["machine"]
    md = ["# Fine-tuning throughput and peak memory", "",
          f"{result['date']}: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, {m['os']}; {m['sortedllama']};"
          f" load average at start {m['load_avg_at_start']:.2f}.", "",
          "Each (implementation, method) ran in its own process, interleaved with the others, `repeat` times: "
          "medians, and for ratios the median of the ratios within each interleaved round. Model FLOPs: the "
          "matrix products of one step (forward + both gradients; heads on labelled positions only). GEMM "
          "speed: the same products timed alone with torch.mm/bmm in the same run. Phases (sortedllama, ms per "
          "step): from metrics.jsonl `phase_ms`."
          + (" The Python processes (PyTorch loop, GEMM timing) ran with "
             f"OPENBLAS_CORETYPE={result['pytorch_openblas_kernel']}, the kernel sortedllama uses."
             if result["pytorch_openblas_kernel"] else "")]
    for s in result["settings"]:
        u = s["setup"]
        md += ["", f"## {s['setting']}: {u['data']} data, batch {u['batch_size']}, max_seq_len {u['max_seq_len']}, "
                   f"{u['model']['num_attention_heads']} heads / {u['model']['num_key_value_heads']} KV heads, "
                   f"{u['tokens_per_step']:.0f} tokens and {u['targets_per_step']:.0f} targets per step, "
                   f"{u['steps'] - u['untimed_steps']} timed steps after {u['untimed_steps']}, {u['repeat']} rounds",
               "", "```",
               f"{'impl':<24} {'method':<6} {'tokens/s':>9} {'ms/step':>8} {'RSS MiB':>8} {'GFLOP/step':>10} "
               f"{'GFLOP/s':>8} {'GEMM GFLOP/s':>12} {'of GEMM':>7}"]
        for r in s["rows"]:
            md.append(f"{r['impl']:<24} {r['method']:<6} {r['tokens_per_s']:>9.1f} {r['ms_per_step']:>8.0f} "
                      f"{r['peak_rss_mib']:>8.0f} {r['model_gflop_per_step']:>10.1f} {r['achieved_gflops']:>8.1f} "
                      f"{r['gemm_gflops_same_shapes']:>12.1f} {r['fraction_of_gemm_speed']:>7.2f}")
        md.append("```")
        phased = [r for r in s["rows"] if "phase_ms" in r]
        if phased:
            keys = list(phased[0]["phase_ms"])
            md += ["", "Where a sortedllama step's time goes (ms):", "", "```",
                   f"{'impl':<24} {'method':<6} " + " ".join(f"{k:>14}" for k in keys)]
            md += [f"{r['impl']:<24} {r['method']:<6} " + " ".join(f"{r['phase_ms'][k]:>14.0f}" for k in keys)
                   for r in phased]
            md.append("```")
        md += ["", "Summary: " + json.dumps(s["summary"])]
    return "\n".join(md) + "\n"


def driver(args):
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sortedllama-bench-ft-")
    alpaca = json.load(open(args.alpaca))
    mach = machine(args.bin, args.threads)
    kernel = os.environ.get("OPENBLAS_CORETYPE") or blas_kernel_of(mach["sortedllama"])
    if kernel:
        BLAS_KERNEL["OPENBLAS_CORETYPE"] = kernel
    result = {"benchmark": "finetune", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": mach,
              "pytorch_openblas_kernel": kernel,
              "settings": [bench_setting(args, s, work, alpaca) for s in args.settings.split(",")]}
    json.dump(result, open(os.path.join(args.out, "finetune.json"), "w"), indent=2)
    md = markdown(result)
    open(os.path.join(args.out, "finetune.md"), "w").write(md)
    print(md)
    print(f"written: {args.out}/finetune.json, {args.out}/finetune.md (runs' output in {work})", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["sft", "soft"], help=argparse.SUPPRESS)
    ap.add_argument("--gemm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--products", help=argparse.SUPPRESS)
    ap.add_argument("--setting", choices=list(SETTINGS), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bin")
    ap.add_argument("--baseline-bin", help="also run this sortedllama binary, interleaved (before/after)")
    ap.add_argument("--bf16", action="store_true", help="also sortedllama with train.precision bf16 (CPU bf16 matmuls) "
                    "and the PyTorch loop under bf16 autocast, interleaved")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench")
    ap.add_argument("--alpaca")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--settings", default="dense,alpaca", help="comma-separated: " + ", ".join(SETTINGS))
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--steps", type=int, help="steps per run (default: per setting)")
    ap.add_argument("--skip", type=int, help="untimed warm-up steps per run (default: per setting)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians count")
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scaling", action="store_true", help="also SoFT on 2 local Gloo ranks (replicated, ZeRO-2)")
    args = ap.parse_args()
    if args.worker:
        args.method = args.worker
        if args.steps <= args.skip:
            ap.error("--steps must exceed --skip")
        worker(args)
    elif args.gemm:
        gemm_worker(args)
    else:
        for flag, v in (("--bin", args.bin), ("--alpaca", args.alpaca)):
            if not v:
                ap.error(f"{flag} is required")
        for name in args.settings.split(","):
            if name not in SETTINGS:
                ap.error(f"--settings: unknown setting {name!r}")
            steps = args.steps or SETTINGS[name]["steps"]
            if steps <= (args.skip if args.skip is not None else SETTINGS[name]["skip"]):
                ap.error("--steps must exceed --skip")
        driver(args)


if __name__ == "__main__":
    main()
