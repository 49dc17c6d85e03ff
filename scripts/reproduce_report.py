"""Writes OUT/REPORT.md (and OUT/summary.txt, also printed) for scripts/reproduce_paper.sh.

Reads only what the pipeline left under OUT: eval/*/results.json (docs/results_schema.md),
finetune/*/metrics.jsonl and final/config.json, steps/*.cmd, data/*.jsonl, invocations.txt.
Steps that did not run (no judge, interrupted) appear as "not run". Standard library only.
"""
import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess

MODELS = [("sft", "SFT"), ("ict", "SFT+ICT"), ("soft", "SoFT 2 ep"), ("soft-4ep", "SoFT 4 ep")]
TQA_MODELS = [("sft", "SFT"), ("ict", "SFT+ICT"), ("soft", "SoFT")]


def load(out, name):
    path = os.path.join(out, "eval", name, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def exit_rows(res):
    """Numeric exit rows of a results.json, sorted by layer."""
    return sorted((k for k in res["exits"] if k.isdigit()), key=int) if res else []


def fmt(v, spec=".3f", missing="–"):
    return missing if v is None else format(v, spec)


def md_table(header, rows, align=None):
    align = align or (["---"] + ["---:"] * (len(header) - 1))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header, rows):
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cols)


def machine():
    info = {"host": platform.node(), "os": f"{platform.system()} {platform.release()}", "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            info["memory"] = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    if shutil.which("nvidia-smi"):
        try:
            gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            if gpus:
                info["gpus"] = "; ".join(gpus)
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finetune_summary(out, name):
    d = os.path.join(out, "finetune", name)
    metrics = os.path.join(d, "metrics.jsonl")
    if not os.path.isfile(os.path.join(d, "final", "config.json")) or not os.path.isfile(metrics):
        return None
    train, valid = {}, None
    with open(metrics) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get("type") == "valid":
                    valid = r
                else:
                    train[r.get("step")] = r  # a resumed run logs its redone steps again
    train = [train[k] for k in sorted(train, key=lambda k: k or 0)]
    cfg = {}
    if os.path.isfile(os.path.join(d, "config.json")):
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
    last = train[-1] if train else {}
    return {"method": cfg.get("method", "?"), "steps": last.get("step"), "epoch": last.get("epoch"),
            "loss": last.get("loss"), "valid": (valid or {}).get("exit_loss", {}),
            "seconds": sum(r.get("ms_per_step", 0) for r in train) / 1000.0,
            "tokens": sum(r.get("tokens", 0) for r in train), "model": cfg.get("model", "")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--mode", default="full")
    ap.add_argument("--judge", default="")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
    mach = machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run_args = open(os.path.join(out, "run.args")).read() if os.path.isfile(os.path.join(out, "run.args")) else ""
    base = dict(l.split("=", 1) for l in run_args.splitlines() if "=" in l and not l.startswith("mode="))
    base_cfg = {}
    if base.get("model") and os.path.isfile(os.path.join(base["model"], "config.json")):
        with open(os.path.join(base["model"], "config.json")) as f:
            base_cfg = json.load(f)
    n_layers = base_cfg.get("num_hidden_layers")

    md = [f"# Sorted LLaMA reproduction ({args.mode} mode)", ""]
    md += ["Tables and figures follow Kavehzadeh et al. 2023, *Sorted LLaMA: Unlocking the Potential of "
           "Intermediate Layers of Large Language Models for Dynamic Inference*. Generated by "
           "`scripts/reproduce_paper.sh` from the `results.json` files under this directory "
           "(schema: docs/results_schema.md); rerunning the script skips finished steps and regenerates "
           "this file.", ""]
    if args.mode.startswith("small"):
        md += ["> **Small mode.** The model is the 260K-parameter stories260K (5 layers), fine-tuned for a few "
               "hundred steps at most on slices of the real data, and it is also its own PandaLM judge. The "
               "numbers exercise the pipeline end to end; they do not reproduce the paper's values.", ""]
    md += ["## Run", "",
           f"- date: {now}",
           f"- machine: {mach.get('host', '?')}, {mach.get('os', '')}, {mach.get('cpu', 'unknown CPU')}, "
           f"{mach.get('cores', '?')} cores, {mach.get('memory', '?')} memory"
           + (f", GPUs: {mach['gpus']}" if "gpus" in mach else ", no GPU"),
           f"- binary: `{args.bin}`: `{version}`",
           f"- base model: `{base.get('model', '?')}`"
           + (f" ({n_layers} layers, hidden size {base_cfg.get('hidden_size')}, vocabulary "
              f"{base_cfg.get('vocab_size')})" if n_layers else ""),
           f"- judge: `{args.judge}`" if args.judge else "- judge: none (pairwise comparisons not run)"]
    if base.get("set"):
        md.append(f"- finetune overrides: `{base['set']}`")
    md.append("")
    rows = []
    for name in ("alpaca", "triviaqa-train", "triviaqa-test", "pandalm"):
        p = os.path.join(out, "data", name + ".jsonl")
        if os.path.isfile(p):
            with open(p) as f:
                n = sum(1 for l in f if l.strip())
            rows.append([name, f"`{base.get(name, '?')}`", n, sha256(p)[:16]])
    if rows:
        md += ["Data (prepared with `sortedllama data prepare` into `data/`):", "",
               md_table(["set", "source", "records", "sha256 (prepared, first 16)"], rows,
                        ["---", "---", "---:", "---"]), ""]
    slices = os.path.join(out, "small", "slices.json")
    if os.path.isfile(slices):
        with open(slices) as f:
            for name, s in json.load(f).items():
                md.append(f"- {name}: {s['rule']} of `{s['source']}`")
        md.append("")

    # ------------------------------------------------------------------------------ fine-tuning
    md += ["## Fine-tuning", "",
           "Training loss at the last step and validation loss per exit (nats/token, response tokens only) "
           "at the end of each run.", ""]
    ft_rows, exits_seen = [], []
    runs = [("sft", "SFT, Alpaca"), ("soft", "SoFT 2 ep, Alpaca"), ("soft-4ep", "SoFT 4 ep, Alpaca"),
            ("ict", "SFT+ICT, Alpaca"), ("tqa-sft", "SFT, TriviaQA"), ("tqa-soft", "SoFT, TriviaQA"),
            ("tqa-ict", "SFT+ICT, TriviaQA")]
    summaries = {name: finetune_summary(out, name) for name, _ in runs}
    for s in summaries.values():
        for k in (s or {}).get("valid", {}):
            if k not in exits_seen:
                exits_seen.append(k)
    exits_seen.sort(key=int)
    for name, label in runs:
        s = summaries[name]
        if s is None:
            ft_rows.append([label, "not run"] + [""] * (4 + len(exits_seen)))
            continue
        ft_rows.append([label, s["method"], s["steps"], fmt(s["epoch"], ".2f"), fmt(s["seconds"], ".0f"),
                        fmt(s["loss"])] + [fmt(s["valid"].get(k)) for k in exits_seen])
    md += [md_table(["run", "method", "steps", "epochs", "train s", "train loss"] + [f"valid exit {k}" for k in exits_seen],
                    ft_rows, ["---", "---"] + ["---:"] * (4 + len(exits_seen))), ""]

    # ------------------------------------------------------------------------------- Table 1
    md += ["## Table 1: PandaLM pairwise comparison against the SFT full model", ""]
    cmp = {m: load(out, f"compare-{m}") for m, _ in MODELS}
    summary_cmp = {}
    if not any(cmp.values()):
        md += ["Not run: no judge (`--judge DIR`, e.g. PandaLM-7B as safetensors). Rerun the script with "
               "`--judge` to add these steps.", ""]
    else:
        exits = sorted({int(r.split(" vs ")[0]) for c in cmp.values() if c for r in c["exits"]})
        md += ["Each exit *k* of each model answers the PandaLM instructions (greedy); the judge compares the "
               "answer with the SFT model's full-depth answer in both orders. Cell: score = (wins − losses) / "
               "(2N) in [−1, 1], then wins/ties/losses over the 2N judgements.", ""]
        header, rows = ["exit"], []
        for m, label in MODELS:
            header.append(label)
        for k in exits:
            row = [k]
            for m, _ in MODELS:
                c = cmp[m]
                rows_c = (c or {"exits": {}})["exits"]
                last_b = max((int(r.split(" vs ")[1]) for r in rows_c), default=0)
                hit = [v for r, v in rows_c.items() if r == f"{k} vs {last_b}"]
                if not c:
                    row.append("not run")
                elif not hit:
                    row.append("–")
                else:
                    v = hit[0]
                    row.append(f"{v['score']:+.3f} ({v['wins']:g}/{v['ties']:g}/{v['losses']:g})")
                    summary_cmp.setdefault(m, {})[k] = v["score"]
            rows.append(row)
        n = next((c["exits"][r]["n"] for c in cmp.values() if c for r in c["exits"]), 0)
        md += [md_table(header, rows), "", f"N = {n} instructions per cell.", ""]
        if os.path.isfile(os.path.join(out, "eval", "compare-soft", "plot_score.svg")):
            md += ["Figure: ![score per exit](eval/compare-soft/plot_score.svg) "
                   "(`eval/compare-soft/plot_score.svg`, SoFT with the other models overlaid)", ""]

    # ---------------------------------------------------------------------------- Figure: matrix
    mat = load(out, "compare-matrix")
    md += ["## Figure 1: SoFT exit x SFT exit pairwise scores", ""]
    if mat and "matrix" in mat.get("details", {}):
        m = mat["details"]["matrix"]
        rows = [[f"SoFT {a}"] + [f"{s:+.3f}" for s in srow] for a, srow in zip(m["a_exits"], m["score"])]
        md += ["Score of SoFT's exit (row) against SFT's exit (column), both orders; > 0 means SoFT wins.", "",
               md_table(["A \\ B"] + [f"SFT {b}" for b in m["b_exits"]], rows), ""]
    else:
        md += ["Not run (needs a judge).", ""]

    # ----------------------------------------------------------------------------------- TriviaQA
    md += ["## TriviaQA exact match per exit", ""]
    tqa = {m: load(out, f"triviaqa-{m}") for m, _ in TQA_MODELS}
    summary_tqa = {}
    if any(tqa.values()):
        exits = sorted({int(k) for t in tqa.values() if t for k in exit_rows(t)})
        n = next((t["exits"][k]["n"] for t in tqa.values() if t for k in exit_rows(t)), 0)
        md += [f"Each model fine-tuned on TriviaQA; greedy answers of every exit on {n} test questions (zero-shot "
               "prompt `Question: ...?\\nAnswer:`). Exact match case-sensitive (the paper's metric), then "
               "lm-eval's normalised exact match and token F1.", ""]
        rows = []
        for k in exits:
            row = [k]
            for metric in ("exact_match_case_sensitive", "exact_match", "f1"):
                for m, _ in TQA_MODELS:
                    v = (tqa[m] or {"exits": {}})["exits"].get(str(k), {}).get(metric)
                    row.append(fmt(v))
                    if metric == "exact_match_case_sensitive" and v is not None:
                        summary_tqa.setdefault(m, {})[k] = v
            rows.append(row)
        header = ["exit"] + [f"EM {l}" for _, l in TQA_MODELS] + [f"EM-norm {l}" for _, l in TQA_MODELS] \
            + [f"F1 {l}" for _, l in TQA_MODELS]
        md += [md_table(header, rows), ""]
        plots = [p for p in ("plot_exact_match_case_sensitive.svg", "plot_exact_match.svg", "plot_f1.svg")
                 if os.path.isfile(os.path.join(out, "eval", "triviaqa-soft", p))]
        if plots:
            md += ["Figures (SoFT with SFT and SFT+ICT overlaid): "
                   + ", ".join(f"[{p}](eval/triviaqa-soft/{p})" for p in plots), ""]
    else:
        md += ["Not run.", ""]

    # ---------------------------------------------------------------------------------- Table 2
    md += ["## Table 2: decoding speed (static exits, self-speculative decoding, dynamic early exit)", ""]
    summary_dec = []

    def decoding_table(title, static, spec, dyn, quality=None, quality_label=None):
        rows = []
        full = None
        if static:
            ks = exit_rows(static)
            full = ks[-1] if ks else None
            for k in ks:
                v = static["exits"][k]
                rows.append(["full model" if k == full else "static exit", f"exit {k} of {full}",
                             fmt(v.get("decode_ms_per_token")), fmt(v.get("speedup"), ".2f") + "x", "", "", k]
                            + ([fmt(v.get(quality))] if quality else []) + [fmt(v.get("agree_full"))])
        for res, kind in ((spec, "speculative"), (dyn, "dynamic")):
            if not res:
                continue
            for r, v in res["exits"].items():
                if r.isdigit():
                    continue
                setting = f"draft layer {r[4:]}" if r.startswith("spec") else "paper's thresholds"
                rows.append([kind, setting, fmt(v.get("decode_ms_per_token")), fmt(v.get("speedup"), ".2f") + "x",
                             fmt(v.get("acceptance_rate"), ".3f", ""), fmt(v.get("mean_accepted_per_round"), ".2f", ""),
                             fmt(v.get("mean_layers_per_token"), ".2f", "")]
                            + ([fmt(v.get(quality))] if quality else []) + [fmt(v.get("agree_full"))])
                summary_dec.append((title, kind, setting, v.get("speedup"), v.get("agree_full")))
        if not rows:
            return [f"### {title}", "", "Not run.", ""]
        header = ["mode", "setting", "ms/token", "speedup", "acceptance", "accepted/round", "layers/token"] \
            + ([quality_label] if quality else []) + ["agree with full"]
        return [f"### {title}", "", md_table(header, rows, ["---", "---"] + ["---:"] * (len(header) - 2)), ""]

    md += ["Greedy decoding; ms/token is decode time per generated token. Static-exit rows come from the per-exit "
           "runs (batched, speedup against the full model in the same run); speculative and dynamic rows decode "
           "one sequence at a time, speedup against the full model measured in the same process. \"agree with "
           "full\": fraction of outputs identical to the full model's (greedy speculative decoding must give 1).",
           ""]
    md += decoding_table("PandaLM instructions, SoFT (Alpaca)", load(out, "instruct-soft"),
                         load(out, "decode-speculative"), load(out, "decode-dynamic"))
    md += decoding_table("TriviaQA, SoFT (TriviaQA)", load(out, "triviaqa-soft"),
                         load(out, "decode-speculative-tqa"), load(out, "decode-dynamic-tqa"),
                         "exact_match_case_sensitive", "EM")

    # ---------------------------------------------------------------------------------- analysis
    md += ["## Layer analysis: how far each exit is from the last layer", ""]
    ana = {m: load(out, f"analysis-{m}") for m in ("sft", "soft")}
    summary_kl = {}
    if any(ana.values()):
        exits = sorted({int(k) for a in ana.values() if a for k in exit_rows(a)})
        pos = next((a["details"].get("positions") for a in ana.values() if a), "?")
        md += [f"Over the first {pos} generated positions of the PandaLM instructions: KL(p_last ‖ p_exit) in nats "
               "and the cosine similarity of the hidden state entering the shared norm + head, exit vs last "
               "layer. \"SoFT KL to SFT\": KL from the SFT full model's distribution to SoFT's exit.", ""]
        rows = []
        for k in exits:
            s = (ana["sft"] or {"exits": {}})["exits"].get(str(k), {})
            o = (ana["soft"] or {"exits": {}})["exits"].get(str(k), {})
            rows.append([k, fmt(s.get("kl")), fmt(o.get("kl")), fmt(s.get("cosine")), fmt(o.get("cosine")),
                         fmt(o.get("kl_reference"))])
            summary_kl[k] = (s.get("kl"), o.get("kl"))
        md += [md_table(["exit", "KL SFT", "KL SoFT", "cosine SFT", "cosine SoFT", "SoFT KL to SFT"], rows), ""]
        plots = [p for p in ("plot_kl.svg", "plot_cosine.svg", "plot_kl_reference.svg")
                 if os.path.isfile(os.path.join(out, "eval", "analysis-soft", p))]
        if plots:
            md += ["Figures (SoFT with SFT overlaid): "
                   + ", ".join(f"[{p}](eval/analysis-soft/{p})" for p in plots), ""]
    else:
        md += ["Not run.", ""]

    # ---------------------------------------------------------------------------- instruction outputs
    md += ["## PandaLM outputs per exit", ""]
    ins = {m: load(out, f"instruct-{m}") for m, _ in MODELS}
    if any(ins.values()):
        exits = sorted({int(k) for r in ins.values() if r for k in exit_rows(r)})
        rows = [[k] + [fmt((ins[m] or {"exits": {}})["exits"].get(str(k), {}).get("mean_new_tokens"), ".1f")
                       for m, _ in MODELS] for k in exits]
        md += ["Mean new tokens per answer; the answers are in `eval/instruct-<model>/samples_exit<k>.jsonl`.", "",
               md_table(["exit"] + [l for _, l in MODELS], rows), ""]
        first = os.path.join(out, "eval", "instruct-soft", f"samples_exit{exits[0]}.jsonl") if exits else ""
        if first and os.path.isfile(first):
            with open(first) as f:
                rec = json.loads(f.readline())
            md += [f"Example: SoFT exit {exits[0]} and exit {exits[-1]} on \"{rec['instruction'][:120]}\":", ""]
            for k in (exits[0], exits[-1]):
                p = os.path.join(out, "eval", "instruct-soft", f"samples_exit{k}.jsonl")
                with open(p) as f:
                    text = json.loads(f.readline())["output"].replace("\n", " ")[:300]
                md.append(f"- exit {k}: {text!r}")
            md.append("")

    # --------------------------------------------------------------------------------- plots, commands
    svgs = sorted(glob.glob(os.path.join(out, "eval", "*", "plot_*.svg")))
    if svgs:
        md += ["## All plots", ""] + [f"- [{os.path.relpath(p, out)}]({os.path.relpath(p, out)})" for p in svgs] + [""]
    md += ["## Commands", "", "Invocations of the script (UTC):", "", "```"]
    inv = os.path.join(out, "invocations.txt")
    md += [open(inv).read().rstrip()] if os.path.isfile(inv) else []
    md += ["```", "", "Each step's commands (`steps/<step>.cmd`; logs in `logs/`):", "", "```"]
    order = sorted(glob.glob(os.path.join(out, "logs", "*.log")))
    for log in order:
        step = os.path.basename(log)[3:-4]
        cmd = os.path.join(out, "steps", step + ".cmd")
        if step == "report" or not os.path.isfile(cmd):
            continue
        md.append(f"# {step}")
        md += [l.rstrip() for l in open(cmd) if l.strip()]
    md += ["```", ""]
    with open(os.path.join(out, "REPORT.md.tmp"), "w") as f:
        f.write("\n".join(md))
    os.replace(os.path.join(out, "REPORT.md.tmp"), os.path.join(out, "REPORT.md"))

    # ------------------------------------------------------------------------------------ stdout
    exits = sorted(set(summary_kl) | {k for d in summary_tqa.values() for k in d}
                   | {k for d in summary_cmp.values() for k in d})
    header = ["exit", "PandaLM SoFT", "PandaLM SFT", "TQA EM SoFT", "TQA EM SFT", "KL SoFT", "KL SFT"]
    rows = []
    for k in exits:
        kl = summary_kl.get(k, (None, None))
        rows.append([k, fmt(summary_cmp.get("soft", {}).get(k), "+.3f"), fmt(summary_cmp.get("sft", {}).get(k), "+.3f"),
                     fmt(summary_tqa.get("soft", {}).get(k)), fmt(summary_tqa.get("sft", {}).get(k)),
                     fmt(kl[1]), fmt(kl[0])])
    lines = [f"Sorted LLaMA reproduction ({args.mode}): {out}/REPORT.md",
             "PandaLM: score against the SFT full model; TQA EM: case-sensitive exact match; KL: to the last layer", "",
             text_table(header, rows)]
    if summary_dec:
        best = {}
        for title, kind, setting, speedup, agree in summary_dec:
            if speedup is not None and (kind not in best or speedup > best[kind][1]):
                best[kind] = (setting, speedup, agree, title)
        lines.append("")
        for kind, (setting, speedup, agree, title) in best.items():
            lines.append(f"best {kind}: {speedup:.2f}x ({setting}, {title}; agrees with full: {fmt(agree)})")
    summary = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(summary)
    print(f"wrote {out}/REPORT.md")


if __name__ == "__main__":
    main()
