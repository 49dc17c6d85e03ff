"""Runs the decoding modes of `sortedllama generate` on one checkpoint and tabulates them (Table 2).

Called by scripts/bench_decoding.sh. Every mode decodes the same prompts one at a time (batch size 1,
the latency setting of the paper), greedily, in one process per mode, --repeat times round-robin
(the fastest run counts); ms/token is the total prefill + decode time over the tokens generated,
decode ms/token leaves out prefill and the token it yields. Speedups divide the full model's figures
measured in the same run. Agreement compares each mode's tokens with the full model's, position by
position.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

from bench_machine import machine

DEFAULT_PROMPTS = [
    "Once upon a time, there was a little girl named",
    "Tom had a red ball. One day",
    "The sun was shining and the birds",
    "Lily and Ben went to the park. They saw",
    "The little dog was sad because",
    "One day, a big bear came to the",
    "Mom said it was time for bed, but",
    "Sam wanted to build a tall tower with his",
    "The old tree in the garden",
    "Anna found a shiny key under the",
    "Question: What is the capital of France?\nAnswer:",
    "Write a short poem about the sea.\n",
    "Explain why the sky is blue.\n",
    "List three fruits that are red:",
    "The best way to learn a new language is",
    "Here is a recipe for pancakes:",
]


ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def auto_exits(n_layers):
    """sl::parse_exits("auto", n): every layer below 8 layers, else 8 exits from 30% of the depth."""
    if n_layers < 8:
        return list(range(1, n_layers + 1))
    first = 0.3 * n_layers
    exits = []
    for i in range(8):
        v = first + (n_layers - first) * i / 7.0
        k = int(v + 0.5)  # std::lround for positive values
        if k not in exits:
            exits.append(k)
    return exits


def jsonl_prompts(path, limit, out):
    """Alpaca-style records ({instruction, input}) as prompts in the Stanford template, {"prompt"}
    records as they are; records with reference outputs longest answer first (a 3-token answer
    leaves a speculative round nothing to accept); at most `limit`. Returns the written file."""
    rows = [json.loads(l) for l in open(path) if l.strip()]
    rows = sorted(rows, key=lambda r: -len(r.get("output", "")))[:limit]
    with open(out, "w") as f:
        for r in rows:
            p = r["prompt"] if "prompt" in r else (ALPACA_INPUT if r.get("input") else ALPACA_NO_INPUT).format(**r)
            f.write(json.dumps({"prompt": p}) + "\n")
    return out


def tuned_mode(args):
    """sortedllama tune on the --tune-prompts (not the measured prompts), config.json left alone:
    its chosen setting as a speculative row, with the tune's own figures."""
    prompts = args.tune_prompts
    if prompts.endswith(".jsonl"):
        prompts = jsonl_prompts(prompts, args.limit, os.path.join(args.out, "tune_prompts.jsonl"))
    cmd = [args.bin, "--threads", str(args.threads), "tune", "--model", args.model, "--prompts", prompts,
           "--new-tokens", str(args.max_new_tokens), "--no-write", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("failed: " + " ".join(cmd) + "\n" + res.stderr)
    c = json.loads(res.stdout)["chosen"]
    extra = ["--speculative", "--draft-layer", str(c["draft_layer"]), "--draft-tokens", str(c["draft_tokens"])]
    if c["draft_confidence"] > 0:
        extra += ["--draft-confidence", str(c["draft_confidence"])]
    tuned = {k: c[k] for k in ("predicted_speedup", "measured_speedup", "measured_end_to_end")}
    return ("speculative", f"tuned: draft layer {c['draft_layer']}, {c['rule']}", extra), tuned


def run_mode(args, prompt_file, extra, max_new_tokens=None):
    cmd = [args.bin, "--threads", str(args.threads), "generate", "--model", args.model, "--prompt-file", prompt_file, "--json",
           "--batch-size", "1", "--max-new-tokens", str(max_new_tokens or args.max_new_tokens)] + extra
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("failed: " + " ".join(cmd) + "\n" + res.stderr)
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def total_ms(rows):
    return sum(r["stats"]["prefill_ms"] + r["stats"]["decode_ms"] for r in rows)


def per_position(rows, key):
    """Element-wise sum of a per-draft-position array over the rows (arrays grow with the longest draft)."""
    total = []
    for r in rows:
        for j, v in enumerate(r["stats"][key]):
            if j == len(total):
                total.append(0)
            total[j] += v
    return total


def summarise(rows, full):
    new = sum(r["stats"]["new_tokens"] for r in rows)
    ms = total_ms(rows)
    # Decode only: the tokens after the first, which the prompt's forward pass (prefill) yields.
    later = new - sum(1 for r in rows if r["stats"]["new_tokens"] > 0)
    decode = sum(r["stats"]["decode_ms"] for r in rows)
    out = {"new_tokens": new, "ms_per_token": ms / new if new else 0.0,
           "decode_ms_per_token": decode / later if later else 0.0}
    # Batch size 1: each row's "stats" (DecodeStats::to_json, docs/results_schema.md) is its own run; add them up.
    if any(r["stats"]["mode"] == "speculative" for r in rows):
        drafted, accepted, rounds, tree_nodes, tree_accepted = (
            sum(r["stats"][k] for r in rows) for k in ("drafted", "accepted", "rounds", "tree_nodes", "tree_accepted"))
        proposed_at, accepted_at = per_position(rows, "proposed_at"), per_position(rows, "accepted_at")
        out.update(acceptance_rate=accepted / drafted if drafted else 0.0,
                   mean_accepted_per_round=accepted / rounds if rounds else 0.0,
                   mean_tokens_per_round=(accepted + tree_accepted + rounds) / rounds if rounds else 0.0,
                   tree_nodes=tree_nodes, tree_accepted=tree_accepted,
                   draft_ms=sum(r["stats"]["draft_ms"] for r in rows), verify_ms=sum(r["stats"]["verify_ms"] for r in rows),
                   acceptance_rate_at=[a / p if p else 0.0 for a, p in zip(accepted_at, proposed_at)])
    if any(r["stats"]["mode"] == "dynamic" for r in rows):
        layers = sum(r["stats"]["mean_layers_per_token"] * r["stats"]["new_tokens"] for r in rows)
        out["mean_layers_per_token"] = layers / new if new else 0.0
    if full is not None:
        agree = total = exact = 0
        for r, f in zip(rows, full):
            a, b = r["tokens"], f["tokens"]
            agree += sum(1 for x, y in zip(a, b) if x == y)
            total += max(len(a), len(b))
            exact += a == b
        out["agreement"] = agree / total if total else 1.0
        out["exact_match"] = exact / len(rows)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", help="one prompt per line, or .jsonl of {prompt} or Alpaca {instruction, input} "
                                      "records (default: 16 built-in prompts)")
    ap.add_argument("--limit", type=int, default=32, help="at most this many .jsonl prompts")
    ap.add_argument("--tune-prompts", help="also a speculative row with what `sortedllama tune` chooses on these prompts "
                                           "(held out from --prompts; .jsonl as --prompts, or one per line)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; the fastest counts")
    ap.add_argument("--tree", type=int, default=4, help="each speculative row is followed by one with a draft tree "
                    "of this many nodes (generate --draft-tree; 0 = no tree rows)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = one per core); small models "
                    "decode fastest on 1, as waking a second thread costs more than their matrix products")
    args = ap.parse_args()

    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    n_layers = config["num_hidden_layers"]
    # generate --dynamic takes the model's calibrated thresholds (sortedllama calibrate) when it has them.
    calibrated = "dynamic" in (config.get("decoding") or {})
    prompt_file = args.prompts
    if prompt_file and prompt_file.endswith(".jsonl"):
        prompt_file = jsonl_prompts(prompt_file, args.limit, os.path.join(args.out, "bench_prompts.jsonl"))
    elif not prompt_file:
        prompt_file = os.path.join(args.out, "bench_prompts.txt")
        with open(prompt_file, "w") as f:
            f.write("\n".join(p.replace("\n", " ") for p in DEFAULT_PROMPTS) + "\n")
    exits = [k for k in auto_exits(n_layers) if k < n_layers]
    modes = [("full", f"{n_layers} layers", [])]
    modes += [("exit", f"{k} layer" + ("s" if k > 1 else ""), ["--exit-layer", str(k)]) for k in exits]
    for k in exits:
        modes.append(("speculative", f"draft layer {k}", ["--speculative", "--draft-layer", str(k)]))
        if args.tree > 0:
            modes.append(("speculative", f"draft layer {k}, tree {args.tree}",
                          ["--speculative", "--draft-layer", str(k), "--draft-tree", str(args.tree)]))
    thresholds = "calibrated thresholds" if calibrated else "default thresholds"
    modes += [("dynamic", thresholds, ["--dynamic"]),
              ("dynamic", thresholds + ", copied K/V", ["--dynamic", "--skipped-kv", "copy"])]
    tuned = None
    if args.tune_prompts:
        mode, tuned = tuned_mode(args)
        modes.append(mode)

    run_mode(args, prompt_file, [], 8)  # warm-up: page in the weights, spin up threads
    # Every mode --repeat times, round-robin, so that a slow spell of the machine hits all modes
    # alike; each mode keeps its fastest run (greedy outputs are the same every time).
    best = {}
    for rep in range(args.repeat):
        for i, (kind, label, extra) in enumerate(modes):
            rows = run_mode(args, prompt_file, extra)
            if i not in best or total_ms(rows) < total_ms(best[i]):
                best[i] = rows
        print(f"pass {rep + 1}/{args.repeat} done", file=sys.stderr)
    results, full = [], None
    for i, (kind, label, extra) in enumerate(modes):
        rows = best[i]
        s = summarise(rows, full)
        if full is None:
            full, full_ms, full_decode = rows, s["ms_per_token"], s["decode_ms_per_token"]
            s.update(agreement=1.0, exact_match=1.0)
        s["speedup"] = full_ms / s["ms_per_token"] if s["ms_per_token"] else 0.0
        s["decode_speedup"] = full_decode / s["decode_ms_per_token"] if s["decode_ms_per_token"] else 0.0
        s.update(mode=kind, setting=label, args=extra)
        if kind == "dynamic":
            s["thresholds"] = rows[0]["stats"]["thresholds"]
        if label.startswith("tuned"):
            s["tune"] = tuned
        results.append(s)
        print(f"{kind:12s} {label:20s} {s['ms_per_token']:8.3f} ms/token  {s['speedup']:5.2f}x  "
              f"(decode {s['decode_speedup']:5.2f}x)", file=sys.stderr)

    # Speculative decoding and dynamic exit with copied K/V prefill the prompt through every layer,
    # as full decoding does: that time bounds their end-to-end speed-up whatever their decoding costs.
    prefill_share = sum(r["stats"]["prefill_ms"] for r in full) / total_ms(full)
    info = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(args.bin, args.threads),
            "model": os.path.abspath(args.model), "n_layers": n_layers, "prompts": prompt_file,
            "max_new_tokens": args.max_new_tokens, "repeat": args.repeat, "tree": args.tree,
            "decoding": "greedy, batch size 1", "full_prefill_share": prefill_share,
            "exact_speedup_ceiling": 1 / prefill_share,
            "results": results}
    with open(os.path.join(args.out, "decoding.json"), "w") as f:
        json.dump(info, f, indent=2)

    lines = [f"# Decoding speed: {os.path.basename(os.path.abspath(args.model))} ({n_layers} layers)", "",
             f"{info['date']}; {info['machine']['cpu']}, {info['machine']['cores']} cores; "
             f"{info['machine']['sortedllama']}", "",
             f"Greedy, batch size 1, {len(full)} prompts, up to {args.max_new_tokens} new tokens each; "
             f"each mode run {args.repeat} times (round-robin), the fastest kept. "
             "ms/token: prefill and decoding over every new token; decode ms/token: the tokens after the first "
             "(which prefill yields). Speedups: full decoding's figure over the mode's, same run. Agreement: share of token positions "
             "equal to the full model's output; exact: share of identical outputs.", "",
             "| mode | setting | ms/token | speedup | decode ms/token | decode speedup | acceptance | accepted/round "
             "| layers/token | agreement | exact |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in results:
        def f(key, fmt):
            return format(s[key], fmt) if key in s else ""
        layers = f("mean_layers_per_token", ".2f") or (s["setting"].split()[0] if s["mode"] in ("full", "exit") else "")
        setting = s["setting"] + (f" ({s['thresholds']})" if "thresholds" in s else "")
        lines.append(f"| {s['mode']} | {setting} | {s['ms_per_token']:.3f} | {s['speedup']:.2f}x | "
                     f"{s['decode_ms_per_token']:.3f} | {s['decode_speedup']:.2f}x | "
                     f"{f('acceptance_rate', '.1%')} | {f('mean_accepted_per_round', '.2f')} | {layers} | "
                     f"{s['agreement']:.1%} | {s['exact_match']:.0%} |")
    prompt_tokens = sum(r["stats"]["prompt_tokens"] for r in full) / len(full)
    new_tokens = sum(r["stats"]["new_tokens"] for r in full) / len(full)
    lines += ["", f"Prompts average {prompt_tokens:.1f} tokens and full decoding's answers {new_tokens:.1f}. "
              f"Prefill takes {prefill_share:.0%} of full decoding's time here. Speculative decoding and early "
              "exit with copied K/V prefill through every layer too, so neither can be more than "
              f"{info['exact_speedup_ceiling']:.2f}x faster end to end on these prompts, however fast it decodes. "
              "Early exit with recomputed K/V (the default) runs the prompt only as deep as its tokens' exits ask."]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "decoding.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
