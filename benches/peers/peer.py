#!/usr/bin/env python3
"""One peer computing reclag's class-conditional energy and OOD flag from Parquet.

    python peer.py {numpy,torch,duckdb,polars} FIXTURE.parquet MODEL.parquet [--save OUT.npz]

Each peer is written the way a competent user of that tool would: vectorised and
batch-wise, reading the model file (reclag's Parquet format) with pyarrow. For every
row it computes, per RECLAG.md §2/§4, with the row's group g = label:

    energy = A_β(Ξ_g · x/‖x‖) = (logsumexp(β·h) − log M) / β
    ood    = energy ≤ τ_g          (the dead-zone test: the origin captures the row
                                    in one step; reclag's score ≤ 0)

With a model of the whitened recipe (RECLAG.md §10) the peers compute that recipe
instead, with no labels (best routing, the default of `reclag score`):

    pre    = l2(W (x/‖x‖ − μ))
    A_g    = A_β(Ξ_g · pre) for every group g;  g* = argmax_g (A_g − τ_g)
    energy = A_{g*},  ood = A_{g*} ≤ τ_{g*}

(DuckDB has no d × d matrix product; it computes the paper recipe only.)

The scores stay in memory (`--save` writes them afterwards, for the agreement check,
outside the timed runs). Prints one JSON line: peer, rows, OOD count, seconds inside
the process.
"""
import json
import sys
import time


def load_model(path):
    """β, d, {group: (Ξ_g as float32, τ_g)} and the whitening (μ, W) or None."""
    import numpy as np
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    meta = {k.decode(): v.decode() for k, v in f.metadata.metadata.items()}
    names = f.schema_arrow.names
    t = f.read(columns=[c for c in ["part", "group", "memory", "vector", "tau"] if c in names])
    if meta.get("reclag.normalize", "l2") != "l2":
        raise SystemExit("the peers implement pre = l2 only")
    beta = float(meta["reclag.beta"])
    d = t.schema.field("vector").type.list_size
    # Format 3 adds calibration-score rows (a null vector); the peers need none of them.
    import pyarrow.compute as pc
    t = t.filter(pc.is_valid(t.column("vector")))
    vec = t.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, d)
    # Format 2 keeps the preprocessing beside the memories, told apart by `part`.
    part = t.column("part").to_numpy(zero_copy_only=False) if "part" in names else np.full(len(vec), "memory")
    whiten = None
    if (part == "mean").any():
        mu = vec[part == "mean"][0]
        order = np.argsort(t.column("memory").to_numpy()[part == "whitening"])
        w = vec[part == "whitening"][order]
        whiten = (mu.astype(np.float32), w.astype(np.float32))
    mem = part == "memory"
    grp = t.column("group").to_numpy(zero_copy_only=False)[mem]
    tau = t.column("tau").to_numpy(zero_copy_only=False)[mem]
    vec = vec[mem]
    model = {}
    for g in np.unique(grp):
        sel = grp == g
        model[int(g)] = (np.ascontiguousarray(vec[sel], dtype=np.float32), float(tau[sel][0]))
    return beta, d, model, whiten


def best_route_numpy(x, beta, model, whiten):
    """§10 with best routing on a float32 batch: (energy, ood)."""
    import numpy as np

    mu, w = whiten
    n = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    z = x / np.where(n > 0, n, 1)
    y = z @ w - (mu @ w)
    ny = np.sqrt(np.einsum("ij,ij->i", y, y))[:, None]
    y /= np.where(ny > 0, ny, 1)
    groups = list(model.items())
    union = np.concatenate([xi for _, (xi, _) in groups])
    h = beta * (y @ union.T).astype(np.float64)
    a = np.empty((len(x), len(groups)))
    o = 0
    for j, (_, (xi, _)) in enumerate(groups):
        hg = h[:, o:o + len(xi)]
        m = hg.max(1)
        a[:, j] = (m + np.log(np.exp(hg - m[:, None]).sum(1)) - np.log(len(xi))) / beta
        o += len(xi)
    tau = np.array([t for _, (_, t) in groups])
    best = np.argmax(a - tau, axis=1)
    e = a[np.arange(len(x)), best]
    return e, e <= tau[best]


def numpy_peer(fixture, model_path):
    import numpy as np
    import pyarrow.dataset as ds

    beta, d, model, whiten = load_model(model_path)
    energy, ood, ids = [], [], []
    for b in ds.dataset(fixture).to_batches(
        columns=["id", "embedding", "label"], batch_size=65536, use_threads=True
    ):
        x = b.column("embedding").values.to_numpy(zero_copy_only=True).reshape(-1, d)
        if whiten is not None:
            e, f = best_route_numpy(x, beta, model, whiten)
            energy.append(e)
            ood.append(f)
            ids.append(b.column("id").to_numpy())
            continue
        norm = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        lab = b.column("label").to_numpy()
        e = np.empty(len(x))
        f = np.empty(len(x), dtype=bool)
        for g, (xi, tau) in model.items():
            ix = np.flatnonzero(lab == g)
            if len(ix) == 0:
                continue
            h = beta * (x[ix] @ xi.T).astype(np.float64) / np.where(norm[ix] > 0, norm[ix], 1)
            m = h.max(1)
            a = (m + np.log(np.exp(h - m[:, None]).sum(1)) - np.log(xi.shape[0])) / beta
            e[ix] = a
            f[ix] = a <= tau
        energy.append(e)
        ood.append(f)
        ids.append(b.column("id").to_numpy())
    return np.concatenate(ids), np.concatenate(energy), np.concatenate(ood)


def torch_peer(fixture, model_path):
    import numpy as np
    import pyarrow.dataset as ds
    import torch

    beta, d, model, whiten = load_model(model_path)
    tm = {g: (torch.from_numpy(xi), tau) for g, (xi, tau) in model.items()}
    if whiten is not None:
        mu, w = (torch.from_numpy(v) for v in whiten)
        wmu = mu @ w
        union = torch.cat([xi for xi, _ in tm.values()])
        sizes = [len(xi) for xi, _ in tm.values()]
        tau = torch.tensor([t for _, t in tm.values()], dtype=torch.float64)
        logm = torch.log(torch.tensor(sizes, dtype=torch.float64))
    energy, ood, ids = [], [], []
    with torch.inference_mode():
        for b in ds.dataset(fixture).to_batches(
            columns=["id", "embedding", "label"], batch_size=65536, use_threads=True
        ):
            xn = b.column("embedding").values.to_numpy(zero_copy_only=True).reshape(-1, d)
            x = torch.nn.functional.normalize(torch.from_numpy(xn), dim=1)
            if whiten is not None:
                y = torch.nn.functional.normalize(x @ w - wmu, dim=1)
                h = beta * (y @ union.T).double()
                a = torch.stack([torch.logsumexp(hg, 1) for hg in torch.split(h, sizes, 1)], 1)
                a = (a - logm) / beta
                best = torch.argmax(a - tau, 1)
                e = a.gather(1, best[:, None]).squeeze(1)
                energy.append(e)
                ood.append(e <= tau[best])
                ids.append(b.column("id").to_numpy())
                continue
            lab = torch.from_numpy(b.column("label").to_numpy())
            e = torch.empty(len(x), dtype=torch.float64)
            f = torch.empty(len(x), dtype=torch.bool)
            for g, (xi, tau) in tm.items():
                ix = torch.nonzero(lab == g).squeeze(1)
                if len(ix) == 0:
                    continue
                h = beta * (x[ix] @ xi.T).double()
                a = (torch.logsumexp(h, 1) - np.log(xi.shape[0])) / beta
                e[ix] = a
                f[ix] = a <= tau
            energy.append(e)
            ood.append(f)
            ids.append(b.column("id").to_numpy())
    return np.concatenate(ids), torch.cat(energy).numpy(), torch.cat(ood).numpy()


def duckdb_peer(fixture, model_path):
    import duckdb
    import numpy as np
    import pyarrow as pa

    beta, d, model, whiten = load_model(model_path)
    if whiten is not None:
        raise SystemExit("duckdb: the whitened recipe needs a d × d matrix product per row, which DuckDB SQL does not have")
    con = duckdb.connect()
    rows = []
    for g, (xi, tau) in model.items():
        for mu, v in enumerate(xi):
            rows.append((g, mu, v.tolist(), tau))
    mem = pa.table(
        {
            "grp": pa.array([r[0] for r in rows], pa.int64()),
            "mu": pa.array([r[1] for r in rows], pa.int32()),
            "vector": pa.array([r[2] for r in rows], pa.list_(pa.float32(), d)),
            "tau": pa.array([r[3] for r in rows], pa.float64()),
        }
    )
    con.register("mem_arrow", mem)
    con.execute(f"CREATE TABLE mem AS SELECT grp, mu, vector::FLOAT[{d}] AS vector, tau FROM mem_arrow")
    q = f"""
    WITH x AS (
      SELECT id, label, embedding::FLOAT[{d}] AS e,
             sqrt(array_inner_product(embedding::FLOAT[{d}], embedding::FLOAT[{d}])) AS n
      FROM read_parquet('{fixture}')
    ), h AS (
      SELECT x.id, m.tau, m.grp,
             {beta} * array_inner_product(x.e, m.vector) / CASE WHEN x.n > 0 THEN x.n ELSE 1 END AS bh
      FROM x JOIN mem m ON m.grp = x.label
    ), s AS (
      SELECT id, any_value(tau) AS tau, count(*) AS m, max(bh) AS mx,
             sum(exp(bh)) AS se
      FROM h GROUP BY id
    )
    SELECT id, (ln(se) - ln(m)) / {beta} AS energy,
           (ln(se) - ln(m)) / {beta} <= tau AS ood
    FROM s ORDER BY id
    """
    t = con.sql(q).to_arrow_table()
    return (
        t.column("id").to_numpy(),
        t.column("energy").to_numpy(),
        t.column("ood").to_numpy(zero_copy_only=False),
    )


def polars_peer(fixture, model_path):
    import numpy as np
    import polars as pl

    beta, d, model, whiten = load_model(model_path)
    ids, energy, ood = [], [], []
    if whiten is not None:
        df = pl.read_parquet(fixture, columns=["id", "embedding"])
        e, f = best_route_numpy(df.get_column("embedding").to_numpy(), beta, model, whiten)
        return df.get_column("id").to_numpy(), e, f
    # Polars reads (in parallel) and partitions by group; the inner products are
    # numpy matmuls on zero-copy views of the Array column.
    df = pl.read_parquet(fixture, columns=["id", "embedding", "label"])
    for (g,), part in df.partition_by("label", as_dict=True).items():
        xi, tau = model[int(g)]
        x = part.get_column("embedding").to_numpy()
        norm = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        h = beta * (x @ xi.T).astype(np.float64) / np.where(norm > 0, norm, 1)
        m = h.max(1)
        a = (m + np.log(np.exp(h - m[:, None]).sum(1)) - np.log(xi.shape[0])) / beta
        ids.append(part.get_column("id").to_numpy())
        energy.append(a)
        ood.append(a <= tau)
    return np.concatenate(ids), np.concatenate(energy), np.concatenate(ood)


PEERS = {"numpy": numpy_peer, "torch": torch_peer, "duckdb": duckdb_peer, "polars": polars_peer}


def main():
    import numpy as np

    name, fixture, model_path = sys.argv[1:4]
    save = sys.argv[sys.argv.index("--save") + 1] if "--save" in sys.argv else None
    t0 = time.perf_counter()
    ids, energy, ood = PEERS[name](fixture, model_path)
    secs = time.perf_counter() - t0
    print(json.dumps({"peer": name, "rows": int(len(ids)), "ood": int(ood.sum()), "seconds": secs}))
    if save:
        order = np.argsort(ids, kind="stable")
        np.savez(save, id=ids[order], energy=energy[order], ood=ood[order])


if __name__ == "__main__":
    main()
