#!/usr/bin/env python3
"""Two builds of `reclag` on the same user paths, alternately, in one run.

A change meant to keep behaviour and speed (a refactor, a dependency bump) is
checked by building the binary before and after it and running

    python3 benches/ab.py BEFORE AFTER [--runs 5] [--only score,sql-file,...]

Each path runs `--runs` times per binary, in the order A B B A A B ... so that a
machine that slows down over the run penalises neither side, and the table gives
the median wall time of each, their ratio, and whether B is more than 5 % slower
(the bar a refactor must clear). The outputs of the two binaries are compared
too: the SQL counts must be equal, and so must the rows written by `score` and
`filter`.

Paths, on the throughput fixtures under `target/bench-data/` (the 1M × 512
table and the model `cargo bench --bench throughput` generates; the lake of
10 daily partitions × 100k rows is cut from the table here if absent, the same
rows the throughput harness writes):
  score     reclag score, Parquet → Parquet, routed by label, keeping id
  sql-file  SELECT count(*) ... WHERE reclag_is_ood(...) over the table
  sql-lake  the same over the lake as a hive table
  filter    reclag filter --keep id
  drift     reclag drift run over the lake (metrics, worst rows, report)

Needs python3 with pyarrow (only to cut the lake, once).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "target" / "bench-data"
TABLE = DATA / "emb-1000000x512.parquet"
MODEL = DATA / "model-K10-M16-d512.parquet"
LAKE = DATA / "lake-10x100000x512"
PARTS, PER = 10, 100_000
QUERY = "SELECT count(*) AS n FROM t WHERE reclag_is_ood('m', embedding, label)"


def ensure_lake() -> None:
    """The lake the throughput harness writes: partition p holds rows p·100k.."""
    if all((LAKE / f"date=2026-11-{p + 1:02}" / "part-0.parquet").exists() for p in range(PARTS)):
        return
    import pyarrow.parquet as pq

    table = pq.read_table(TABLE)
    for p in range(PARTS):
        d = LAKE / f"date=2026-11-{p + 1:02}"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "part-0.parquet.tmp"
        pq.write_table(table.slice(p * PER, PER), tmp, row_group_size=64 * 1024, compression="snappy")
        tmp.rename(d / "part-0.parquet")


def commands(binary: str, work: Path) -> dict:
    out = work / "out.parquet"
    spec = work / "drift.toml"
    spec.write_text(
        f'[source]\nurl = "{LAKE}"\npartitioning = "hive:date"\ngroup = "label"\n'
        f'[model]\nurl = "{MODEL}"\n[output]\nurl = "{work / "drift-out"}"\n'
    )
    return {
        "score": ([binary, "score", "--model", str(MODEL), "--input", str(TABLE), "--output", str(out),
                   "--group", "label", "--keep-columns", "id"], out),
        "sql-file": ([binary, "sql", "--table", f"t={TABLE}", "--model", f"m={MODEL}", QUERY], None),
        "sql-lake": ([binary, "sql", "--table", f"t={LAKE}/", "--model", f"m={MODEL}", QUERY], None),
        "filter": ([binary, "filter", "--model", str(MODEL), "--input", str(TABLE), "--output", str(out),
                    "--group", "label", "--keep", "id"], out),
        "drift": ([binary, "drift", "run", str(spec)], None),
    }


def run_once(cmd: list, work: Path) -> tuple:
    shutil.rmtree(work / "drift-out", ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode not in (0, 2):  # drift exits 2 when it alerts
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return dt, r.stdout


def written(path) -> object:
    if path is None:
        return None
    import pyarrow.parquet as pq

    return pq.read_table(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="the reference binary (before)")
    ap.add_argument("b", help="the binary under test (after)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="score,sql-file,sql-lake,filter,drift")
    args = ap.parse_args()
    if not TABLE.exists() or not MODEL.exists():
        sys.exit(f"{TABLE} or {MODEL} is missing: run `cargo bench --bench throughput` once to generate them")
    ensure_lake()
    paths = args.only.split(",")
    rows = []
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        work = {k: Path(tmp) / k for k in "ab"}
        for w in work.values():
            w.mkdir()
        cmds = {k: commands(b, work[k]) for k, b in (("a", args.a), ("b", args.b))}
        for path in paths:
            times = {"a": [], "b": []}
            last = {}
            for i in range(args.runs):
                order = "ab" if i % 2 == 0 else "ba"
                for k in order:
                    cmd, out = cmds[k][path]
                    dt, stdout = run_once(cmd, work[k])
                    times[k].append(dt)
                    last[k] = (stdout if path.startswith("sql") else None, out)
            same = last["a"][0] == last["b"][0]
            if same and last["a"][1] is not None:
                same = written(last["a"][1]).equals(written(last["b"][1]))
            if not same:
                sys.exit(f"{path}: the two binaries' outputs differ")
            a, b = statistics.median(times["a"]), statistics.median(times["b"])
            rows.append((path, a, b, b / a))
            print(f"{path}: A {a:.2f} s, B {b:.2f} s", file=sys.stderr)
    print(f"{os.cpu_count()} cores, {args.runs} runs per binary, alternating; medians")
    print("| path | A (s) | B (s) | B / A time | verdict |")
    print("|---|---|---|---|---|")
    for path, a, b, r in rows:
        verdict = "slower by more than 5 %" if r > 1.05 else "within 5 %" if r >= 0.95 else "faster"
        print(f"| {path} | {a:.2f} | {b:.2f} | {r:.3f} | {verdict} |")


if __name__ == "__main__":
    main()
