#!/usr/bin/python3
"""Training throughput and peak memory: sortedllama finetune (SFT, SoFT) against a plain PyTorch loop.

Driver (run by scripts/bench_finetune.sh): writes a data slice and a finetune config for a
LLaMA-shaped model initialised from scratch, runs `sortedllama finetune` for SFT and SoFT and the
plain PyTorch loop below for SFT and SoFT, each in its own process (peak RSS from wait4), and
writes OUT/finetune.json and OUT/finetune.md. Tokens/s counts non-padding tokens over the timed
steps (the first --skip steps are warm-up and not timed).

The PyTorch loop is what a researcher would write first: HF-style LLaMA in float32, logits of the
whole batch for each exit, cross-entropy with ignored prompt positions, AdamW. Its SoFT keeps every
exit's [batch, seq, vocab] logits alive until backward (the memory the paper paid for).
"""
import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

SHAPE = {  # LLaMA-shaped, small enough for a CPU: 8 layers, dim 256, LLaMA 2 vocabulary
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 8,
    "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}
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
    c = SHAPE
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

    def forward(tokens, mask, exits):
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
            k = (h @ params[f"{i}.k"].t()).view(B, T, KV, hd).transpose(1, 2)
            v = (h @ params[f"{i}.v"].t()).view(B, T, KV, hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1)
            x = x + (att @ v).transpose(1, 2).reshape(B, T, D) @ params[f"{i}.o"].t()
            h = rms(x, params[f"{i}.n2"])
            x = x + (F.silu(h @ params[f"{i}.gate"].t()) * (h @ params[f"{i}.up"].t())) @ params[f"{i}.down"].t()
            if i + 1 in exits:
                out.append(rms(x, params["norm"]) @ params["head"].t())  # [B, T, V] per exit
        return out

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    examples = []
    for r in json.load(open(args.data)):
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
        logits = forward(tokens, mask, exits)
        loss = sum(F.cross_entropy(lg.view(-1, V), labels.view(-1), ignore_index=-100) for lg in logits) / len(logits)
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


# ------------------------------------------------------------------ driver
def run_measured(cmd, stdout_path):
    """Runs cmd, returns (exit code, peak RSS in MiB, wall seconds). Every run gets the OpenMP wait
    policy that sortedllama picks for itself (PASSIVE), so that the PyTorch loop is not slowed by
    OpenMP threads spinning against OpenBLAS's."""
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    with open(stdout_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024.0, time.perf_counter() - t0


def machine(bin_path, threads):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    version = subprocess.run([bin_path, "--threads", str(threads), "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 2**20, 1),
            "os": platform.platform(), "sortedllama": version, "load_avg_at_start": os.getloadavg()[0]}


def driver(args):
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sortedllama-bench-ft-")
    data = os.path.join(work, "alpaca_slice.json")
    records = json.load(open(args.alpaca))[: args.records]
    json.dump(records, open(data, "w"))
    cfg = {"init": SHAPE, "tokenizer": args.tokenizer, "exits": "all", "data": {
        "train": data, "format": "alpaca", "max_seq_len": args.max_seq_len},
        "train": {"batch_size": args.batch_size, "lr": 2e-5, "max_steps": args.steps, "seed": args.seed,
                  "warmup_ratio": 0.0}, "log": {"every": 1}, "save": {"every": 0}}
    cfg_path = os.path.join(work, "bench.json")
    json.dump(cfg, open(cfg_path, "w"), indent=1)

    rows = []
    runs = [("sortedllama", "sft"), ("sortedllama", "soft"), ("pytorch", "sft"), ("pytorch", "soft")]
    if args.scaling:  # data parallel on this machine: 2 Gloo ranks, replicated and sharded optimizer
        runs += [("sortedllama-2ranks", "soft"), ("sortedllama-2ranks-zero2", "soft")]
    for impl, method in runs:
        log = os.path.join(work, f"{impl}-{method}.out")
        print(f"== {impl} {method}: {args.steps} steps (the first {args.skip} untimed)", file=sys.stderr, flush=True)
        if impl.startswith("sortedllama"):
            out_dir = os.path.join(work, f"{impl}-{method}")
            cmd = [args.bin, "--threads", str(args.threads), "finetune"]
            if impl != "sortedllama":  # ranks share the cores; wait4 reports the largest rank's peak RSS
                cmd = [args.bin, "--threads", str(max(1, args.threads // 2)), "launch", "--nproc", "2", "--",
                       "finetune", "--set", f"dist.zero_stage={2 if impl.endswith('zero2') else 0}"]
            rc, rss, wall = run_measured(cmd + ["--config", cfg_path, "--set", f"method={method}",
                                                "--set", f"out_dir={out_dir}"], log)
            steps = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]
            steps = [s for s in steps if s.get("type") == "train" and s["step"] > args.skip]
            ms = sum(s["ms_per_step"] for s in steps)
            tok = sum(s["tokens"] for s in steps)
            res = {"tokens_per_s": tok / (ms / 1000), "ms_per_step": ms / len(steps), "tokens_per_step": tok / len(steps)}
        else:
            rc, rss, wall = run_measured([sys.executable, __file__, "--worker", method, "--data", data,
                                          "--tokenizer", args.tokenizer, "--steps", str(args.steps),
                                          "--skip", str(args.skip), "--batch-size", str(args.batch_size),
                                          "--max-seq-len", str(args.max_seq_len), "--threads", str(args.threads),
                                          "--seed", str(args.seed)], log)
            res = json.loads(open(log).read().strip().splitlines()[-1]) if rc == 0 else {}
        if rc != 0:
            sys.exit(f"error: {impl} {method} failed (exit {rc}); its output is in {log}")
        rows.append({"impl": impl, "method": method, "peak_rss_mib": round(rss, 1), "wall_s": round(wall, 1),
                     **{k: round(v, 2) for k, v in res.items()}})

    by = {(r["impl"], r["method"]): r for r in rows}
    base = by[("pytorch", "sft")]
    for r in rows:
        r["speed_vs_pytorch_sft"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        own_sft = by[("pytorch" if r["impl"] == "pytorch" else "sortedllama", "sft")]
        r["rss_vs_same_impl_sft"] = round(r["peak_rss_mib"] / own_sft["peak_rss_mib"], 3)
    # What SoFT's extra heads should cost: matrix FLOPs per step (forward + backward = 3x forward) of
    # the trunk over every token and of one head (or 8) over the labelled positions. Both
    # implementations see the same batches, so the PyTorch worker's token counts serve for both.
    c = SHAPE
    D, I, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    layer = D * D * (2 + 2 * c["num_key_value_heads"] / c["num_attention_heads"]) + 3 * D * I
    trunk = 6 * L * layer * base["tokens_per_step"]
    head = 6 * D * V * base["targets_per_step"]
    summary = {
        "soft_over_sft_matrix_flops": round((trunk + L * head) / (trunk + head), 3),
        "sortedllama_soft_over_sft_step_time": round(by[("sortedllama", "soft")]["ms_per_step"]
                                                     / by[("sortedllama", "sft")]["ms_per_step"], 3),
        "sortedllama_vs_pytorch_speed_sft": round(by[("sortedllama", "sft")]["tokens_per_s"] / base["tokens_per_s"], 3),
        "sortedllama_vs_pytorch_speed_soft": round(by[("sortedllama", "soft")]["tokens_per_s"]
                                                   / by[("pytorch", "soft")]["tokens_per_s"], 3),
        "sortedllama_soft_rss_over_sft": by[("sortedllama", "soft")]["rss_vs_same_impl_sft"],
        "pytorch_soft_rss_over_sft": by[("pytorch", "soft")]["rss_vs_same_impl_sft"],
    }
    if args.scaling:
        one = by[("sortedllama", "soft")]
        for impl in ("sortedllama-2ranks", "sortedllama-2ranks-zero2"):
            summary[f"{impl}_speed_vs_1_process"] = round(by[(impl, "soft")]["tokens_per_s"] / one["tokens_per_s"], 3)
            summary[f"{impl}_rss_per_rank_vs_1_process"] = round(by[(impl, "soft")]["peak_rss_mib"] / one["peak_rss_mib"], 3)
    result = {"benchmark": "finetune", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(args.bin, args.threads),
              "model": SHAPE, "setup": {"batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
                                        "steps": args.steps, "untimed_steps": args.skip, "threads": args.threads,
                                        "data": args.alpaca, "records": args.records, "exits_soft": "all 8",
                                        "tokenizer": args.tokenizer},
              "rows": rows, "summary": summary}
    json.dump(result, open(os.path.join(args.out, "finetune.json"), "w"), indent=2)

    head = f"{'impl':<24} {'method':<6} {'tokens/s':>9} {'ms/step':>8} {'x pytorch sft':>13} {'peak RSS MiB':>12} {'x own SFT':>9}"
    lines = [head] + [f"{r['impl']:<24} {r['method']:<6} {r['tokens_per_s']:>9.1f} {r['ms_per_step']:>8.0f} "
                      f"{r['speed_vs_pytorch_sft']:>13.2f} {r['peak_rss_mib']:>12.0f} {r['rss_vs_same_impl_sft']:>9.2f}"
                      for r in rows]
    m = result["machine"]
    md = ["# Fine-tuning throughput and peak memory", "",
          f"{result['date']}: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, {m['os']}; {m['sortedllama']};"
          f" load average at start {m['load_avg_at_start']:.2f}.", "",
          f"Model: LLaMA-shaped, {SHAPE['num_hidden_layers']} layers, dim {SHAPE['hidden_size']}, vocab "
          f"{SHAPE['vocab_size']}, random init. Alpaca (first {args.records} records), batch {args.batch_size}, "
          f"max_seq_len {args.max_seq_len}, {args.steps - args.skip} timed steps after {args.skip}. SoFT: all 8 exits.",
          "", "```", *lines, "```", "", "Summary: " + json.dumps(summary)]
    open(os.path.join(args.out, "finetune.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(lines))
    print(json.dumps(summary))
    print(f"written: {args.out}/finetune.json, {args.out}/finetune.md", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["sft", "soft"], help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--bin")
    ap.add_argument("--out", default="bench")
    ap.add_argument("--alpaca")
    ap.add_argument("--data")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scaling", action="store_true", help="also SoFT on 2 local Gloo ranks (replicated, ZeRO-2)")
    args = ap.parse_args()
    if args.steps <= args.skip:
        ap.error("--steps must exceed --skip")
    if args.worker:
        args.method = args.worker
        worker(args)
    else:
        for flag, v in (("--bin", args.bin), ("--alpaca", args.alpaca)):
            if not v:
                ap.error(f"{flag} is required")
        driver(args)


if __name__ == "__main__":
    main()
