#!/usr/bin/env python3
"""The peer harness: reclag against numpy + pyarrow, PyTorch (CPU), DuckDB and Polars
on Parquet → class-conditional RecLag energy and OOD flag, in one run.

    python3 benches/peers/run.py            # full: N = 1,000,000, d = 512 and 384, 3 runs
    python3 benches/peers/run.py --tiny     # CI: N = 10,000, one run, agreement only

It creates a venv (target/peers-venv) and installs numpy, pyarrow, duckdb and polars
(torch too in full mode, if it installs), generates deterministic fixtures, trains one
model per fixture with `reclag train`, checks that every peer agrees with reclag, then
times everything as whole processes, alternating the order between runs, and reports
medians and peak RSS. Full mode rewrites the "Peers" section of BENCHMARKS.md.

A missing package skips its peer with a message; it never fails the harness. A peer
that disagrees with reclag does (exit 1).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VENV = os.path.join(ROOT, "target", "peers-venv")
HERE = os.path.dirname(os.path.abspath(__file__))
K, M = 10, 16
# The whitened recipe's default memories per group (RECLAG.md §10).
M_WHITENED = 64
WHITENED = " (whitened)"
ROW_GROUP = 65536
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def bootstrap(args):
    """Re-executes inside the venv, creating it and installing what installs."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV) or args.no_venv:
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        log(f"== creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    pkgs = ["numpy", "pyarrow", "duckdb", "polars"]
    if not args.tiny:
        pkgs.append("torch")
    for p in pkgs:
        if subprocess.run([py, "-c", f"import {p}"], capture_output=True).returncode == 0:
            continue
        log(f"== pip install {p}")
        r = subprocess.run(
            [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", p],
            timeout=1800,
        )
        if r.returncode != 0:
            log(f"   {p} did not install; its peer will be skipped")
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def have(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def fixture(path, n, d, seed):
    """Rows shaped like a lake of embeddings a model was trained on: K = 10 labels,
    each with M = 16 directions; 90 % of rows lie near one direction of their label,
    10 % are random (the OOD share). Snappy, 64Ki-row row groups, the embedding
    PLAIN-encoded (FixedSizeList<Float32>), id and label dictionary-encoded."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(path):
        return
    log(f"== fixture {os.path.basename(path)}")
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((K, M, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=2, keepdims=True)
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("embedding", pa.list_(pa.field("item", pa.float32(), nullable=False), d)),
            ("label", pa.int64()),
        ]
    )
    tmp = path + ".tmp"
    with pq.ParquetWriter(
        tmp, schema, compression="snappy", use_dictionary=["id", "label"]
    ) as w:
        for s in range(0, n, ROW_GROUP):
            c = min(ROW_GROUP, n - s)
            ids = np.arange(s, s + c, dtype=np.int64)
            lab = ids % K
            mu = rng.integers(0, M, c)
            x = centers[lab, mu] + rng.standard_normal((c, d)).astype(np.float32) * np.float32(
                0.6 / np.sqrt(d)
            )
            rnd = rng.random(c) < 0.1
            x[rnd] = rng.standard_normal((int(rnd.sum()), d)).astype(np.float32)
            emb = pa.FixedSizeListArray.from_arrays(
                pa.array(x.reshape(-1), pa.float32()), type=schema.field("embedding").type
            )
            w.write_table(
                pa.table([pa.array(ids), emb, pa.array(lab)], schema=schema),
                row_group_size=ROW_GROUP,
            )
    os.replace(tmp, path)


def run_measured(argv, env=None):
    """Runs argv to completion through measure.py: (wall s, peak RSS MiB, stdout)."""
    p = subprocess.run(
        [sys.executable, "-S", os.path.join(HERE, "measure.py")] + list(argv),
        capture_output=True,
        env=env,
    )
    out, err = p.stdout.decode(), p.stderr.decode()
    lines = err.rstrip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("@@measure "):
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}:\n{out[-2000:]}\n{err[-4000:]}")
    m = json.loads(lines[-1][len("@@measure "):])
    return m["seconds"], m["maxrss_mib"], out


def reclag_bin(args):
    if args.reclag:
        return args.reclag
    profile = "debug" if args.tiny else "release"
    exe = os.path.join(ROOT, "target", profile, "reclag")
    cmd = ["cargo", "build", "-q", "-p", "reclag-pipelines", "--bin", "reclag"]
    if profile == "release":
        cmd.append("--release")
    log(f"== {' '.join(cmd)}")
    subprocess.run(cmd, cwd=ROOT, check=True)
    return exe


def reference(pq, np, scored):
    """reclag's outputs in id order, the reference every peer is held to; and the
    number of rows the dynamics flagged."""
    t = pq.read_table(scored, columns=["id", "reclag_energy", "reclag_score", "reclag_is_ood"])
    order = np.argsort(t.column("id").to_numpy(), kind="stable")
    ref = {
        "id": t.column("id").to_numpy()[order],
        "energy": t.column("reclag_energy").to_numpy()[order],
        "margin": t.column("reclag_score").to_numpy()[order],
    }
    ref["ood"] = ref["margin"] <= 0
    return ref, int(t.column("reclag_is_ood").to_numpy(zero_copy_only=False).sum())


def agree(name, ref, got, tol):
    """Max |Δenergy| and flag mismatches against reclag; raises when over `tol`."""
    import numpy as np

    if not np.array_equal(ref["id"], got["id"]):
        raise SystemExit(f"{name}: row ids differ from reclag's")
    diff = float(np.max(np.abs(ref["energy"] - got["energy"]))) if len(ref["id"]) else 0.0
    # A flag may differ only where the energy sits within tol of τ.
    flips = ref["ood"] != got["ood"]
    near = np.abs(ref["margin"]) <= tol
    bad = int((flips & ~near).sum())
    if diff > tol or bad:
        raise SystemExit(
            f"{name} disagrees with reclag: max |Δenergy| = {diff:.3g} (tolerance {tol}), {bad} flag(s) differ away from τ"
        )
    return diff, int(flips.sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="N = 10,000, one run, agreement only (CI)")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--dims", default="512,384")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--epochs", type=int, default=2, help="training epochs (model and train benchmark)")
    ap.add_argument("--reclag", help="the reclag binary (default: build target/release/reclag)")
    ap.add_argument("--no-venv", action="store_true", help="use this interpreter's packages")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--only-train", action="store_true",
                    help="only the training benchmark (both recipes), printed, not written")
    args = ap.parse_args()
    bootstrap(args)
    n = args.rows or (10_000 if args.tiny else 1_000_000)
    runs = args.runs or (1 if args.tiny else 3)
    dims = [int(d) for d in args.dims.split(",")]
    if not (have("numpy") and have("pyarrow")):
        log("SKIP: numpy and pyarrow are needed for the fixtures and did not install")
        return 0
    import numpy as np
    import pyarrow.parquet as pq

    data = os.path.join(ROOT, "target", "peers-data")
    os.makedirs(data, exist_ok=True)
    exe = reclag_bin(args)
    py = sys.executable
    if args.only_train:
        fixture(os.path.join(data, f"fix-{n}x{dims[0]}.parquet"), n, dims[0], seed=dims[0])
        train = train_bench(exe, py, data, n, dims[0], args.epochs, args.runs or 1)
        print("\n".join(train_lines(n, train)))
        return 0
    peers = [p for p in ["numpy", "torch", "duckdb", "polars"] if have(p) or log(f"SKIP peer {p}: not installed")]
    results = {"rows": n, "runs": runs, "dims": {}, "peers": peers}
    for d in dims:
        fix = os.path.join(data, f"fix-{n}x{d}.parquet")
        fixture(fix, n, d, seed=d)
        model = os.path.join(data, f"model-{n}x{d}-e{args.epochs}.parquet")
        train = [exe, "train", "--input", fix, "--label", "label", "--recipe", "paper",
                 "--memories", str(M), "--epochs", str(args.epochs), "--output", model]
        if not os.path.exists(model):
            log(f"== reclag train (d = {d})")
            run_measured(train)
        wmodel = os.path.join(data, f"model-{n}x{d}-whitened.parquet")
        if not os.path.exists(wmodel):
            log(f"== reclag train --recipe whitened (d = {d})")
            run_measured([exe, "train", "--input", fix, "--label", "label", "--memories",
                          str(M_WHITENED), "--output", wmodel])
        wout = os.path.join(data, f"scored-{n}x{d}-whitened.parquet")
        out = os.path.join(data, f"scored-{n}x{d}.parquet")
        contestants = {
            "reclag score": [exe, "score", "--model", model, "--input", fix, "--output", out,
                             "--group", "label", "--keep-columns", "id"],
            "reclag sql": [exe, "sql", "--table", f"t={fix}", "--model", f"m={model}", "--output", os.path.join(data, f"sql-{n}x{d}.ndjson"),
                           "SELECT count(*) AS ood FROM t WHERE reclag_score('m', embedding, label) <= 0"],
            "reclag filter (Polars)": [exe, "filter", "--model", model, "--input", fix, "--group", "label",
                                       "--keep", "ood", "--output", os.path.join(data, f"ood-{n}x{d}.parquet")],
        }
        for p in peers:
            contestants[p] = [py, os.path.join(HERE, "peer.py"), p, fix, model]
        # The whitened recipe as `reclag score` runs it by default: no group, each row
        # routed to the group of largest margin. DuckDB cannot express the whitening.
        wpeers = [p for p in peers if p != "duckdb"]
        contestants["reclag score" + WHITENED] = [exe, "score", "--model", wmodel, "--input", fix,
                                                  "--output", wout, "--keep-columns", "id"]
        for p in wpeers:
            contestants[p + WHITENED] = [py, os.path.join(HERE, "peer.py"), p, fix, wmodel]
        limits = {
            "bytes read (page cache)": [py, os.path.join(HERE, "limits.py"), "read", fix],
            # The floor of `score` itself: what it decodes, through its reader, every
            # value read once, no math.
            "decode as score (reclag's reader)": [exe, "score", "--model", model, "--input", fix, "--output", out,
                                                  "--group", "label", "--keep-columns", "id",
                                                  "--decode-only", "as-score"],
            # Every column as Arrow arrays, the embedding included: what a reader's
            # caller gets, and more work than `score` does.
            "decode to Arrow (reclag's reader)": [exe, "score", "--model", model, "--input", fix, "--output", out,
                                                  "--group", "label", "--keep-columns", "id", "--decode-only", "arrow"],
            "decode to Arrow (general Arrow reader)": [exe, "score", "--model", model, "--input", fix, "--output", out,
                                                       "--group", "label", "--keep-columns", "id",
                                                       "--decode-only", "arrow"],
        }
        envs = {"decode to Arrow (general Arrow reader)": dict(os.environ, RECLAG_FAST_DECODE="0")}
        # Agreement: reclag's own outputs are the reference.
        log(f"== agreement (d = {d})")
        run_measured(contestants["reclag score"])
        ref, is_ood = reference(pq, np, out)
        dres = {"agreement": {}, "times": {}, "rss": {}, "ood": int(ref["ood"].sum()), "is_ood": is_ood}
        run_measured(contestants["reclag sql"])
        with open(os.path.join(data, f"sql-{n}x{d}.ndjson")) as f:
            sql_count = json.loads(f.read().strip().splitlines()[-1])["ood"]
        if sql_count != dres["ood"]:
            raise SystemExit(f"reclag sql counted {sql_count} OOD rows, reclag score {dres['ood']}")
        run_measured(contestants["reclag filter (Polars)"])
        kept = pq.ParquetFile(os.path.join(data, f"ood-{n}x{d}.parquet")).metadata.num_rows
        if kept != is_ood:
            raise SystemExit(f"reclag filter kept {kept} OOD rows, reclag score flagged {is_ood}")
        for p in peers:
            npz = os.path.join(data, f"peer-{p}-{n}x{d}.npz")
            run_measured(contestants[p] + ["--save", npz])
            got = dict(np.load(npz))
            diff, flips = agree(p, ref, got, tol=1e-4)
            dres["agreement"][p] = {"max_abs_energy_diff": diff, "flag_flips_at_tau": flips}
            log(f"   {p}: max |Δenergy| = {diff:.2e}, flags differing at τ: {flips}")
        run_measured(contestants["reclag score" + WHITENED])
        wref, wis_ood = reference(pq, np, wout)
        dres["whitened"] = {"ood": int(wref["ood"].sum()), "is_ood": wis_ood, "agreement": {}}
        for p in wpeers:
            npz = os.path.join(data, f"peer-{p}-{n}x{d}-whitened.npz")
            run_measured(contestants[p + WHITENED] + ["--save", npz])
            # The peers whiten in float32, as a user with BLAS would.
            diff, flips = agree(p + WHITENED, wref, dict(np.load(npz)), tol=1e-4)
            dres["whitened"]["agreement"][p] = {"max_abs_energy_diff": diff, "flag_flips_at_tau": flips}
            log(f"   {p}{WHITENED}: max |Δenergy| = {diff:.2e}, flags differing at τ: {flips}")
        if args.tiny:
            results["dims"][d] = dres
            continue
        names = list(contestants) + list(limits)
        allc = {**contestants, **limits}
        for r in range(runs):
            # Rotate the order so no contestant always runs first (cold) or last.
            k = r % len(names)
            for name in names[k:] + names[:k]:
                secs, rss, _ = run_measured(allc[name], envs.get(name))
                dres["times"].setdefault(name, []).append(secs)
                dres["rss"].setdefault(name, []).append(rss)
                log(f"   run {r + 1} {name}: {secs:.2f} s, {rss:.0f} MiB")
        for what in ["membw", "sgemm"]:
            _, _, o = run_measured([py, os.path.join(HERE, "limits.py"), what, fix, str(M), str(K)])
            dres[what] = json.loads(o)
        results["dims"][d] = dres
    if not args.tiny:
        # Training takes minutes per run at this size: one run of each.
        results["train"] = train_bench(exe, py, data, n, dims[0], args.epochs, 1)
    with open(os.path.join(data, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    log(f"== results in {os.path.join(data, 'results.json')}")
    if not args.tiny and not args.no_write:
        write_benchmarks(results)
    return 0


def train_bench(exe, py, data, n, d, epochs, runs):
    """Both recipes against the numpy peer computing the same one: the paper recipe
    (M = 16, `epochs` epochs) and the whitened default (M = 64, β by
    leave-one-group-out)."""
    fix = os.path.join(data, f"fix-{n}x{d}.parquet")
    model = os.path.join(data, f"train-bench-{d}.parquet")
    peer = [py, os.path.join(HERE, "numpy_reclag.py"), "--train", fix]
    cmds = {
        "reclag train": [exe, "train", "--input", fix, "--label", "label", "--recipe", "paper",
                         "--memories", str(M), "--epochs", str(epochs), "--output", model],
        "numpy (numpy_reclag.py)": peer + ["--memories", str(M), "--epochs", str(epochs)],
        "reclag train" + WHITENED: [exe, "train", "--input", fix, "--label", "label",
                                    "--memories", str(M_WHITENED), "--output", model],
        "numpy (numpy_reclag.py)" + WHITENED: peer + ["--recipe", "whitened", "--memories",
                                                      str(M_WHITENED)],
    }
    times = {k: [] for k in cmds}
    rss = {k: [] for k in cmds}
    for r in range(runs):
        order = list(cmds.items())
        if r % 2:
            order.reverse()
        for name, cmd in order:
            secs, m, _ = run_measured(cmd)
            times[name].append(secs)
            rss[name].append(m)
            log(f"   train run {r + 1} {name}: {secs:.1f} s, {m:.0f} MiB")
    return {"d": d, "epochs": epochs, "times": times, "rss": rss}


def train_lines(n, tr):
    tt = {k: median(v) for k, v in tr["times"].items()}
    lines = ["", f"### Training: {n:,} × {tr['d']}, K = {K}", ""]
    lines.append("| recipe | trainer | median s | peak RSS |")
    lines.append("|---|---|---|---|")
    for k in tt:
        recipe = f"whitened, M = {M_WHITENED}, β auto" if k.endswith(WHITENED) else f"paper, M = {M}, {tr['epochs']} epochs"
        lines.append(f"| {recipe} | {k.replace(WHITENED, '')} | {tt[k]:.1f} | {max(tr['rss'][k]):.0f} MiB |")
    lines.append("")
    for suffix, name in [("", "paper"), (WHITENED, "whitened")]:
        a, b = tt.get("reclag train" + suffix), tt.get("numpy (numpy_reclag.py)" + suffix)
        if a and b:
            lines.append(f"`reclag train` ({name}) is {b / a:.1f}× faster than numpy computing the same recipe (target: faster).")
    lines.append("")
    lines.append(f"Reproduce: `python3 benches/peers/run.py --only-train --rows {n}` (prints this table).")
    return lines


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def write_benchmarks(res):
    n = res["rows"]
    lines = [BEGIN, "", "## Peers: Parquet → class-conditional energy and OOD flag", ""]
    lines.append(
        f"Written by `python3 benches/peers/run.py` on {time.strftime('%Y-%m-%d')}. N = {n:,} rows, "
        f"K = {K} groups, M = {M} memories, Parquet with {ROW_GROUP:,}-row row groups, snappy, "
        "the embedding a PLAIN-encoded `FixedSizeList<Float32>`. Every figure is a whole "
        f"process (start-up, imports and model load included), the median of {res['runs']} runs "
        "with the order rotated between runs; peak RSS from `wait4` in a small launcher (`measure.py`). The peers keep their "
        "scores in memory; `reclag score` writes a Parquet file of `id` and its five outputs "
        "(including the dynamics, which the peers do not run)."
    )
    for d, r in res["dims"].items():
        lines += ["", f"### d = {d}", ""]
        t_all = {k: median(v) for k, v in r["times"].items()}
        rss = {k: max(v) for k, v in r["rss"].items()}
        t = {k: v for k, v in t_all.items() if not k.endswith(WHITENED)}
        peer_names = [p for p in res["peers"] if p in t]
        best = min(peer_names, key=lambda p: t[p]) if peer_names else None
        lines.append("| contestant | median s | rows/s | peak RSS | vs best peer |")
        lines.append("|---|---|---|---|---|")
        for k in t:
            ratio = f"{t[best] / t[k]:.2f}×" if best else "—"
            lines.append(f"| {k} | {t[k]:.2f} | {n / t[k]:,.0f} | {rss[k]:.0f} MiB | {ratio} |")
        lines.append("")
        lines.append(
            f"Agreement with `reclag score` (max |Δenergy|; flags that differ, all within 1e-4 of τ): "
            + ", ".join(
                f"{p} {a['max_abs_energy_diff']:.1e} ({a['flag_flips_at_tau']})" for p, a in r["agreement"].items()
            )
            + f". OOD rows: {r['ood']:,} (score ≤ 0), {r['is_ood']:,} by the dynamics."
        )
        lines.append(
            f"Limits measured the same way: memory bandwidth {r['membw']['gb_per_s']:.1f} GB/s (a copy; "
            f"{r['membw']['gb_per_s'] * 1e9 / (4 * d):,.0f} rows/s at 4·d bytes a row); the sgemm of the "
            f"same shapes (K × ({n // K:,} × {d}) · ({d} × {M}), numpy/OpenBLAS) {r['sgemm']['seconds']:.3f} s."
        )
        if best:
            s = t["reclag score"]
            floor = t["decode as score (reclag's reader)"]
            arrow = t["decode to Arrow (reclag's reader)"]
            lines.append("")
            lines.append(
                f"Targets: `reclag score` at {t[best] / s:.2f}× the best peer ({best}) "
                f"({'met' if t[best] / s >= 3 else 'NOT met'}: ≥ 3×); at {floor / s * 100:.0f} % of the rows/s of "
                f"decoding what it decodes ({'met' if floor / s >= 0.7 else 'NOT met'}: ≥ 70 %; "
                f"{arrow / s * 100:.0f} % of decoding to Arrow arrays); "
                f"peak RSS {rss['reclag score']:.0f} MiB "
                f"({'met' if rss['reclag score'] <= 1024 else 'NOT met'}: ≤ 1 GiB)."
            )
        w = r.get("whitened")
        tw = {k: v for k, v in t_all.items() if k.endswith(WHITENED)}
        if w and tw:
            lines += ["", f"Whitened recipe (§10), M = {M_WHITENED}, β auto, rows without a group routed "
                      "by best margin (every group scored; a d × d whitening product per row):", ""]
            wpeer = [k for k in tw if not k.startswith("reclag")]
            wbest = min(wpeer, key=lambda k: tw[k]) if wpeer else None
            lines.append("| contestant | median s | rows/s | peak RSS | vs best peer |")
            lines.append("|---|---|---|---|---|")
            for k in tw:
                ratio = f"{tw[wbest] / tw[k]:.2f}×" if wbest else "—"
                lines.append(f"| {k} | {tw[k]:.2f} | {n / tw[k]:,.0f} | {rss[k]:.0f} MiB | {ratio} |")
            lines.append("")
            lines.append(
                "Agreement with `reclag score` (peers whiten in float32): "
                + ", ".join(f"{p} {a['max_abs_energy_diff']:.1e} ({a['flag_flips_at_tau']})"
                            for p, a in w["agreement"].items())
                + f". OOD rows: {w['ood']:,} (score ≤ 0), {w['is_ood']:,} by the dynamics."
            )
            ws = tw["reclag score" + WHITENED]
            if wbest:
                lines.append(
                    f"Targets: `reclag score` (whitened) at {tw[wbest] / ws:.2f}× the best peer ({wbest}) "
                    f"({'met' if tw[wbest] / ws >= 3 else 'NOT met'}: ≥ 3×); its rows/s are "
                    f"{t['reclag score'] / ws * 100:.0f} % of the paper recipe's (`reclag score` above)."
                )
    tr = res.get("train")
    if tr:
        lines += train_lines(n, tr)
    lines += ["", END]
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read()
    block = "\n".join(lines)
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    log(f"== wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
