#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The measuring half of tools/bench/compare (which sets everything up).

Each round runs, back to back: readbw, resident-engine bench, llama-bench
(prefill sizes at depth 0, then decode at each depth), so noise from other
load on the machine hits both engines alike; the report takes medians over
rounds. The last line printed is the JSON summary.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def run(cmd):
    print("compare: $ " + " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return r.stdout


def warm(paths):
    """Read files once so both engines start from a warm page cache (the
    machine is shared; a cold start would measure the disk)."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def llama_json(out):
    # llama-bench -o json prints one JSON array
    start = out.index("[")
    return json.loads(out[start:])


def main():
    ap = argparse.ArgumentParser()
    for k in ("model", "engine", "llama-bench", "readbw", "pp", "depth"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--tg", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    # median: the middle round; best: the fastest round of each engine and
    # test (the repeated minimum of the time), for a machine that other
    # jobs load unevenly between rounds
    ap.add_argument("--stat", choices=("median", "best"), default="median")
    # llama.cpp's worker threads busy-poll between graph nodes; on a loaded
    # machine that starves them (docs/performance.md, CPU): --llama-poll 0
    # passes --poll 0 to llama-bench, which is llama.cpp's better setting there
    ap.add_argument("--llama-poll", type=int, default=None)
    a = ap.parse_args()
    load0 = os.getloadavg()
    poll = ["--poll", str(a.llama_poll)] if a.llama_poll is not None else []
    pp = [int(x) for x in a.pp.split(",")]
    depth = [int(x) for x in a.depth.split(",")]
    gguf = a.model + "/model-q4_0.gguf"
    import glob
    st_files = sorted(glob.glob(a.model + "/*.safetensors"))
    res = {"bw": [], "r_pp": {p: [] for p in pp}, "l_pp": {p: [] for p in pp},
           "r_tg": {d: [] for d in depth}, "l_tg": {d: [] for d in depth},
           "ttft": [], "rss": [], "bpt": None}
    for rnd in range(a.rounds):
        bw = json.loads(run([a.readbw, "--threads", str(a.threads), "--mib", "1024", "--json"]))
        res["bw"].append(bw["read_gb_s"])
        warm(st_files)
        r = json.loads(run([a.engine, "bench", "--model", a.model, "--threads", str(a.threads),
                            "--pp", a.pp, "--depth", a.depth, "--tg", str(a.tg), "--json"]))
        for e in r["prefill"]:
            res["r_pp"][e["tokens"]].append(e["tok_s"])
        for e in r["decode"]:
            res["r_tg"][e["depth"]].append(e["tok_s"])
        res["ttft"].append(r["ttft_ms"])
        res["rss"].append(r["peak_rss_mib"])
        res["bpt"] = r["bytes_per_token"]
        warm([gguf])
        lp = llama_json(run([a.llama_bench, "-m", gguf, "-t", str(a.threads), "-p", a.pp,
                             "-n", "0", "-r", "1", "-o", "json"] + poll))
        for e in lp:
            res["l_pp"][e["n_prompt"]].append(e["avg_ts"])
        lt = llama_json(run([a.llama_bench, "-m", gguf, "-t", str(a.threads), "-p", "0",
                             "-n", str(a.tg), "-d", a.depth, "-r", "1", "-o", "json"] + poll))
        for e in lt:
            res["l_tg"][e.get("n_depth", 0)].append(e["avg_ts"])
        print(f"compare: round {rnd + 1}/{a.rounds} done", file=sys.stderr, flush=True)

    med = statistics.median if a.stat == "median" else max
    load1 = os.getloadavg()
    print(f"load average (1/5/15 min) at start {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
          f"at end {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} ({os.cpu_count()} CPUs); "
          f"statistic over rounds: {a.stat}"
          + (f"; llama-bench --poll {a.llama_poll}" if a.llama_poll is not None else ""))
    bw = med(res["bw"])
    print(f"machine read bandwidth: {bw:.2f} GB/s ({a.threads} threads, {a.stat} of {a.rounds})")
    print(f"model: {a.model} ({a.layers} layers), weights read per decoded token "
          f"{res['bpt'] / 2**20:.1f} MiB")
    print(f"{'test':<22}{'resident tok/s':>16}{'llama.cpp tok/s':>17}{'ratio':>8}")
    out = {}
    for p in pp:
        r, l = med(res["r_pp"][p]), med(res["l_pp"][p])
        print(f"{'prefill ' + str(p):<22}{r:>16.2f}{l:>17.2f}{r / l:>8.2f}")
        out[p] = r / l
    dr = {}
    for d in depth:
        r, l = med(res["r_tg"][d]), med(res["l_tg"][d])
        print(f"{'decode ' + str(a.tg) + ' @ depth ' + str(d):<22}{r:>16.2f}{l:>17.2f}{r / l:>8.2f}")
        dr[d] = (r, l)
    print("per round (resident / llama.cpp tok/s): " + "; ".join(
        [f"pp{p} " + ", ".join(f"{r:.1f}/{l:.1f}" for r, l in zip(res["r_pp"][p], res["l_pp"][p]))
         for p in pp] +
        [f"tg@{d} " + ", ".join(f"{r:.2f}/{l:.2f}" for r, l in zip(res["r_tg"][d], res["l_tg"][d]))
         for d in depth]))
    d0 = med(res["r_tg"][depth[0]])
    frac = d0 * res["bpt"] / 1e9 / bw
    print(f"decode at depth {depth[0]}: {d0 * res['bpt'] / 1e9:.2f} GB/s of weights = "
          f"{100 * frac:.0f} % of the measured read bandwidth")
    ttft = statistics.median(res["ttft"]) if a.stat == "median" else min(res["ttft"])
    print(f"TTFT ({pp[-1]} tokens): {ttft:.0f} ms; peak RSS {max(res['rss']):.0f} MiB")
    summary = {
        "decode_ratio_d0": round(dr[depth[0]][0] / dr[depth[0]][1], 3),
        "decode_ratio_d4096": round(dr[depth[-1]][0] / dr[depth[-1]][1], 3),
        "prefill_ratio_512": round(out[pp[0]], 3),
        "prefill_ratio_4096": round(out[pp[-1]], 3),
        "decode_bw_fraction": round(frac, 3),
        "layers": a.layers,
        "threads": a.threads,
        "pp": pp, "depth": depth, "tg": a.tg, "rounds": a.rounds,
        "read_gb_s": round(bw, 3),
        "stat": a.stat, "llama_poll": a.llama_poll,
        "loadavg": [round(load0[0], 1), round(load1[0], 1)],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
