"""Draws docs/figures/*.png from the CSV files beside them."""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig_dir = sys.argv[1]


def rows(name):
    path = os.path.join(fig_dir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return list(csv.DictReader(f))


def save(fig, name):
    fig.tight_layout()
    out = os.path.join(fig_dir, name)
    fig.savefig(out, dpi=90)
    print("wrote", out)


sweep = rows("anonymity-sweep.csv")
if sweep:
    # One curve per λ_P and adversary (a CSV from before adversaries were
    # swept has no such column: the exponential-mixing attack).
    for r in sweep:
        r.setdefault("adversary", "exponential")
    rates = sorted({float(r["lambda_p"]) for r in sweep})
    advs = sorted({r["adversary"] for r in sweep})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"exponential": ("-", "o"), "discount": ("--", "s")}
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.5))
    for i, lp in enumerate(rates):
        for adv in advs:
            rs = [r for r in sweep if float(r["lambda_p"]) == lp and r["adversary"] == adv]
            if not rs:
                continue
            ls, marker = styles.get(adv, (":", "x"))
            colour = colours[i % len(colours)]
            d = [float(r["delay_ms"]) for r in rs]
            top = [float(r["top1_over_chance"]) for r in rs]
            lo = [t - float(r["ci_lo"]) for t, r in zip(top, rs)]
            hi = [float(r["ci_hi"]) - t for t, r in zip(top, rs)]
            label = f"λ_P = {lp:g}/s ({lp + 1:g} pkt/s), {adv}"
            a.errorbar(d, top, yerr=[lo, hi], marker=marker, ls=ls, color=colour,
                       capsize=3, label=label)
            b.plot(d, [float(r["entropy_pct"]) for r in rs], marker=marker, ls=ls,
                   color=colour, label=label)
            c.plot([float(r["latency_s"]) for r in rs if r["latency_s"]],
                   [t for t, r in zip(top, rs) if r["latency_s"]],
                   marker=marker, ls=ls, color=colour, label=label)
    a.axhline(1.0, color="grey", ls=":", label="chance")
    a.axhline(1.5, color="red", ls="--", label="target ≤ 1.5 × chance")
    a.set(xscale="log", xlabel="mean delay per hop (ms)",
          ylabel="top-1 accuracy / chance", title="Top-1 accuracy (95 % CI)")
    b.axhline(99.0, color="red", ls="--", label="target ≥ 99 %")
    b.set(xscale="log", xlabel="mean delay per hop (ms)",
          ylabel="entropy, % of log2 N", title="Sender entropy, N = 100")
    c.axhline(1.0, color="grey", ls=":")
    c.set(xlabel="mean latency to the dropbox (s)", ylabel="top-1 accuracy / chance",
          title="Latency against anonymity")
    delays = sorted({float(r["delay_ms"]) for r in sweep})
    for ax in (a, b):
        ax.set_xticks(delays)
        ax.set_xticklabels([f"{d:g}" for d in delays])
        ax.minorticks_off()
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.suptitle("umbra eval anonymity: " + ", ".join(advs) + " adversary, 100 clients, "
                 "2 mix nodes per layer, 5000 targets, λ_L = λ_M = 1/s")
    save(fig, "anonymity-sweep.png")

bench = rows("bench-mixnode.csv")
if bench:
    # Rows written before the generator had cores of its own carry no
    # placement: it shared the node's two cores then.
    own = {r.get("generator_cores") for r in bench} - {None, "", "0"}
    placement = ("node on " + bench[0]["cores"] + " core(s), load generator on its own"
                 if own else "node and load generator sharing 2 cores")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for jumbo, label, marker in [("false", "1500-byte MTU (production)", "o"),
                                 ("true", "jumbo datagrams", "s")]:
        pts = [(float(r["delay_ms"]), float(r["ratio"])) for r in bench
               if r["jumbo"] == jumbo and r["valid"] == "true" and r["ratio"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
    ax.axhline(0.9, color="grey", linestyle="--", linewidth=1, label="target 0.9")
    ax.set_xscale("symlog", linthresh=20)
    ax.set_xticks([0, 20, 100, 400, 800])
    ax.set_xticklabels(["0", "20", "100", "400", "800"])
    ax.set(xlabel="mean per-hop delay (ms)", ylabel="mix node rate / raw unwrap rate",
           title="umbra bench mixnode: ratio against delay and MTU\n(" + placement + ", 3 peers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "bench-mixnode.png")

long_term = rows("long-term.csv")
if long_term:
    # The defaults (both kinds of targets), and each mitigation measured
    # (store targets) when its CSV is there.
    curves = [("defaults (800 ms, λ_P = 5/s), seed 1: any K of a sender", long_term, "store", "o", "-"),
              ("defaults, message targets", long_term, "message", "s", ":"),
              ("defaults, seed 1: K of one box (what one gateway links)", long_term,
               "store_box", "P", "-.")]
    seed2 = rows("long-term-seed-2.csv")
    if seed2:
        curves.append(("defaults, seed 2: K of one box", seed2, "store_box", "X", "-."))
    for name, label, marker in [("long-term-seed-2.csv", "defaults, seed 2", "D"),
                                ("long-term-delay-400.csv", "400 ms (the default before)", "^"),
                                ("long-term-lambda-p-8.csv", "400 ms, λ_P = 8/s", "v"),
                                ("long-term-nym.csv", "Nym-like (15 ms, λ_P = 50/s)", "x")]:
        extra = rows(name)
        if extra:
            curves.append((label, extra, "store", marker, "-"))
    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    for label, data, kind, marker, style in curves:
        rs = [r for r in data if r["kind"] == kind and r["independent"] == "true"]
        if not rs:
            continue
        k = [int(r["k"]) for r in rs]
        y = [100 * float(r["identified"]) for r in rs]
        lo = [100 * float(r["ci_lo"]) for r in rs]
        hi = [100 * float(r["ci_hi"]) for r in rs]
        ax.plot(k, y, marker=marker, linestyle=style, label=label)
        ax.fill_between(k, lo, hi, alpha=0.15)
    chance = 100 * float(long_term[0]["chance"])
    ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.axhline(10, color="grey", linestyle="--", linewidth=1, label="target ≤ 10 % (at K = 1000)")
    ax.axvline(305, color="black", linestyle=":", linewidth=1,
               label="the most one box held (a sender moves on after 300)")
    ax.set_xscale("log")
    ax.set(xlabel="K linked stores of one sender (all different)",
           ylabel="senders identified (%)",
           title="Long-term attack, N = 100 (store targets unless noted; 95 % bands over trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "long-term.png")
