#!/usr/bin/python3
"""Training recipes on one budget: SFT and every named recipe (plus --variant runs) fine-tune the
real pretrained stories260K on the same short Alpaca records with the same seed and steps; each
final model's response-only NLL per exit on held-out records comes from `sortedllama eval --task
loss`. Writes OUT/recipes.json, OUT/recipes.md and OUT/recipes_loss.svg (per-exit loss curves of
every run overlaid, drawn by `eval --plot --overlay`).

Driver of scripts/bench_recipes.sh; run that.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from bench_machine import machine

RECIPES = ["soft", "layerskip", "lite", "anchored"]
RECOMMENDED = "anchored"


def run(cmd, log):
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {p.returncode}); see {log}")


def short_records(alpaca, max_chars, n_train, n_held):
    """The first n_train + n_held records whose instruction, input and output total <= max_chars."""
    short = [r for r in json.load(open(alpaca))
             if len(r["instruction"]) + len(r["input"]) + len(r["output"]) <= max_chars]
    if len(short) < n_train + n_held:
        sys.exit(f"error: only {len(short)} records of at most {max_chars} characters")
    return short[:n_train], short[n_train:n_train + n_held]


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def runs_to_do(args):
    """(label, --set assignments) of every run: SFT, the recipes, then the variants."""
    todo = [("sft", ["method=sft"])] + [(r, ["method=soft", f"train.recipe={r}"]) for r in args.recipes]
    for v in args.variant:
        label, _, sets = v.partition("=")
        if not label or not sets:
            sys.exit(f"error: --variant {v}: expected LABEL=key=value,key=value")
        todo.append((label, ["method=soft"] + sets.split(",")))
    return todo


def train_and_eval(args, label, sets, config, held, work):
    out = f"{work}/runs/{label}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    cmd = [args.bin, "--threads", str(args.threads), "finetune", "--config", config, "--set", f"out_dir={out}"]
    for s in sets:
        cmd += ["--set", s]
    run(cmd, f"{work}/{label}.train.log")
    seconds = time.time() - t0
    ev = f"{work}/eval/{label}"
    run([args.bin, "eval", "--model", f"{out}/final", "--task", "loss", "--data", held, "--exits", "all",
         "--out", ev, "--label", label], f"{work}/{label}.eval.log")
    exits = json.load(open(f"{ev}/results.json"))["exits"]
    last = [json.loads(l) for l in open(f"{out}/metrics.jsonl") if '"train"' in l][-1]
    return {"label": label, "sets": sets, "train_seconds": seconds,
            "final_train_loss": last["loss"],
            "exit_loss": {k: v["loss"] for k, v in sorted(exits.items(), key=lambda kv: int(kv[0]))}}


def plot(args, results, held, work):
    """One chart of every run's per-exit loss: the recommended recipe's eval with the others overlaid."""
    main = next((r for r in results if r["label"] == RECOMMENDED), results[-1])["label"]
    overlay = []
    for r in results:
        if r["label"] != main:
            overlay += ["--overlay", f"{work}/eval/{r['label']}/results.json"]
    run([args.bin, "eval", "--model", f"{work}/runs/{main}/final", "--task", "loss", "--data", held, "--exits", "all",
         "--out", f"{work}/plot", "--label", main, "--plot"] + overlay, f"{work}/plot.log")
    shutil.copy(f"{work}/plot/plot_loss.svg", f"{args.out}/recipes_loss.svg")


def targets(results, n_layers):
    """The recipe's goals against SFT: full model within 0.15 nats; every exit <= L/2 >= 3 nats better."""
    sft = next(r for r in results if r["label"] == "sft")["exit_loss"]
    out = {}
    for r in results:
        if r["label"] == "sft":
            continue
        e = r["exit_loss"]
        full_gap = e[str(n_layers)] - sft[str(n_layers)]
        shallow = {k: sft[k] - e[k] for k in e if int(k) <= n_layers / 2}
        out[r["label"]] = {"full_gap_nats": full_gap, "shallow_gain_nats": shallow,
                           "met": full_gap <= 0.15 and all(g >= 3 for g in shallow.values())}
    return out


def write_markdown(path, doc):
    res, n_layers = doc["results"], doc["settings"]["n_layers"]
    lines = ["# Training recipes on one budget (stories260K, real Alpaca)", "",
             f"Machine: {doc['machine']['cpu']} ({doc['machine']['cores']} cores), {doc['machine']['sortedllama']}", "",
             f"Command: `{doc['command']}`", "",
             "Held-out response-only NLL (nats/token, `eval --task loss`) per exit after "
             f"{doc['settings']['steps']} steps of {doc['settings']['batch_size']} "
             f"(lr {doc['settings']['lr']}, cosine) on {doc['settings']['train_records']} Alpaca records of at most "
             f"{doc['settings']['max_chars']} characters; {doc['settings']['held_out_records']} held-out records; seed "
             f"{doc['settings']['seed']} for every run. Lower is better.", "",
             "| run | " + " | ".join(f"exit {k}" + (" (full)" if k == n_layers else "") for k in range(1, n_layers + 1)) +
             " | full − SFT | exits ≤ L/2: SFT − run | target met | train s |",
             "|---|" + "---:|" * (n_layers + 4)]
    for r in res:
        t = doc["targets"].get(r["label"])
        cells = [f"{r['exit_loss'][str(k)]:.3f}" for k in range(1, n_layers + 1)]
        gap = f"{t['full_gap_nats']:+.3f}" if t else "—"
        gains = ", ".join(f"{k}: {v:+.2f}" for k, v in t["shallow_gain_nats"].items()) if t else "—"
        met = ("yes" if t["met"] else "no") if t else "—"
        name = r["label"] + (" (recommended)" if r["label"] == RECOMMENDED else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gap} | {gains} | {met} | {r['train_seconds']:.0f} |")
    lines += ["", "Settings per run (`--set`): " + "; ".join(f"{r['label']}: `{' '.join(r['sets'])}`" for r in res),
              "", "Plot: recipes_loss.svg (per-exit loss of every run).", ""]
    open(path, "w").write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--max-chars", type=int, default=160)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=0, help="finetune's intra-op threads (0: one per core)")
    ap.add_argument("--recipes", type=lambda s: s.split(","), default=RECIPES)
    ap.add_argument("--variant", action="append", default=[], help="LABEL=key=value,key=value: one more soft run")
    ap.add_argument("--command", default="scripts/bench_recipes.sh")
    args = ap.parse_args()
    os.makedirs(f"{args.work}/runs", exist_ok=True)
    os.makedirs(args.out, exist_ok=True)

    model = f"{args.work}/stories260K"
    if not os.path.exists(f"{model}/config.json"):
        src = f"{args.shared}/models/stories260K"
        run([args.bin, "convert", "--from", "llama2c", "--input", f"{src}/stories260K.bin", "--tokenizer",
             f"{src}/tok512.model", "--out", model], f"{args.work}/convert.log")
    train, held_out = short_records(f"{args.shared}/data/alpaca/alpaca_data_cleaned.json", args.max_chars,
                                    args.train, args.held_out)
    write_jsonl(f"{args.work}/train.jsonl", train)
    held = f"{args.work}/held_out.jsonl"
    write_jsonl(held, held_out)
    config = f"{args.work}/config.json"
    json.dump({"model": model, "exits": "all", "data": {"train": f"{args.work}/train.jsonl", "format": "alpaca",
                                                        "max_seq_len": 512},
               "train": {"batch_size": args.batch_size, "lr": args.lr, "max_steps": args.steps, "seed": args.seed},
               "log": {"every": 50}}, open(config, "w"), indent=2)

    results = []
    for label, sets in runs_to_do(args):
        print(f"-- {label}: {' '.join(sets)}", flush=True)
        results.append(train_and_eval(args, label, sets, config, held, args.work))
        print("   " + " ".join(f"{k}:{v:.3f}" for k, v in results[-1]["exit_loss"].items()), flush=True)
    n_layers = json.load(open(f"{model}/config.json"))["num_hidden_layers"]
    plot(args, results, held, args.work)
    doc = {"machine": machine(args.bin), "command": args.command,
           "settings": {"model": "stories260K (convert --from llama2c)", "n_layers": n_layers, "steps": args.steps,
                        "batch_size": args.batch_size, "lr": args.lr, "schedule": "cosine, warmup 3%",
                        "train_records": args.train, "held_out_records": args.held_out, "max_chars": args.max_chars,
                        "seed": args.seed, "threads": args.threads},
           "results": results, "targets": targets(results, n_layers)}
    json.dump(doc, open(f"{args.out}/recipes.json", "w"), indent=2)
    write_markdown(f"{args.out}/recipes.md", doc)
    print(open(f"{args.out}/recipes.md").read())


if __name__ == "__main__":
    main()
