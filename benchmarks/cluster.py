"""Benchmark: pseudo-labelling (kNN + Jaccard + DBSCAN×2 + refinement), sparse vs dense.

Run by hand (never imported by the tests):

    .venv/bin/python benchmarks/cluster.py                       # N = 2k, 5k, 10k, 28k
    .venv/bin/python benchmarks/cluster.py --sizes 2000,10000 --dense-max 10000

Features: N L2-normalised 2048-d vectors, gaussian blobs on the sphere around N/20 identity
centres (plus 2 % pure-noise outliers), so clustering has a ground truth for the ARI.

Each measurement runs in its own subprocess (``--worker``) so the peak memory is that of one
method: RSS is sampled by a thread (psutil, every 5 ms) per step and the whole-process peak is
``VmHWM`` (``ru_maxrss`` would include the parent's RSS, which Linux carries over exec);
torch, faiss and scikit-learn are imported before the baseline (a training process has them); ``base`` is the RSS after the features were made (their 8·N·D/… bytes are not
the method's). Reported per step: wall seconds and peak RSS increase over the step's start.

* ``ours``: maskcl.cluster (exact kNN via torch symmetric tiling by default; sparse Jaccard;
  sparse DBSCAN at eps and eps − eps_gap; sparse refinement).
* ``dense``: a textbook dense implementation written here (k-reciprocal sets, ½-expansion,
  Gaussian weights, local query expansion and Jaccard on dense N×N float32 matrices with
  per-sample loops, like the public faiss_rerank code), then scikit-learn DBSCAN on the dense
  matrix twice and the N×N refinement. Its kNN is faiss ``IndexFlatL2`` like the public code.
  Skipped above ``--dense-max`` (default 10000): three N×N float32 matrices are 9.4 GB at 28k.
* ``knn``: exact torch (and faiss) kNN times against the approximate mode (IVF, ``--nlist`` /
  ``--nprobe``): speed-up, recall@k1 (all and same-identity neighbours) and the change of the
  labels' ARI when the approximate kNN feeds the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EPS, EPS_GAP, K1, K2, MIN_SAMPLES = 0.6, 0.02, 30, 6, 4


# ---------------------------------------------------------------- data
def make_labels(n: int, per_id: int, seed: int) -> np.ndarray:
    """[N] ground-truth identities (outliers: unique negative labels)."""
    lab = np.random.default_rng(seed).integers(0, max(2, n // per_id), n)
    n_out = n // 50
    lab[:n_out] = -1 - np.arange(n_out)
    return lab


def make_features(n: int, dim: int, per_id: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, dim] float32 unit vectors: blobs around N/per_id centres + 2 % outliers; labels [N]."""
    lab = make_labels(n, per_id, seed)
    rng = np.random.default_rng(seed + 1)
    ids = max(2, n // per_id)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= spread / np.sqrt(dim)
    n_out = n // 50
    x[n_out:] += centres[lab[n_out:]]
    x[:n_out] = rng.standard_normal((n_out, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, lab


# ---------------------------------------------------------------- measurement
class Meter:
    """Per-step wall time and peak RSS increase (psutil sampling thread)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.steps: dict[str, dict[str, float]] = {}
        self.base = self.rss()

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def run(self, name, fn, *args, **kwargs):
        start_rss = self.rss()
        peak = [start_rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], self.rss())

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        stop.set()
        th.join()
        peak[0] = max(peak[0], self.rss())
        self.steps[name] = {"s": dt, "peak_mb": (peak[0] - start_rss) / 2**20}
        return out

    def report(self, **extra) -> dict:
        # VmHWM (this process's RSS high-water mark); ru_maxrss would carry the parent's RSS
        # over exec on Linux
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                maxrss = int(line.split()[1]) * 1024
        return {"steps": self.steps, "base_mb": self.base / 2**20, "maxrss_mb": maxrss / 2**20,
                "peak_over_base_mb": (maxrss - self.base) / 2**20, **extra}


# ---------------------------------------------------------------- dense textbook reference
def dense_jaccard(x: np.ndarray, initial_rank: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Zhong et al. k-reciprocal Jaccard, dense N×N float32 with per-sample loops (public-code style).

    ``initial_rank`` [N, k1] (self first): like the public code, whose faiss search returns k1
    neighbours, so "k1 + 1" forward lists hold k1 entries.
    """
    n = x.shape[0]

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = initial_rank[i, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    half = int(np.around(k1 / 2))
    r_full = [reciprocal(i, k1) for i in range(n)]
    r_half = [reciprocal(i, half) for i in range(n)]
    V = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = r_full[i]
        expansion = r
        for c in r:
            rc = r_half[c]
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        d = 2.0 - 2.0 * (x[expansion] @ x[i])
        w = np.exp(-(d - d.min()))
        V[i, expansion] = w / w.sum()
    if k2 != 1:
        Vq = np.zeros_like(V)
        for i in range(n):
            Vq[i] = V[initial_rank[i, :k2]].mean(axis=0)
        V = Vq
        del Vq
    inv = [np.where(V[:, l] != 0)[0] for l in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        s_min = np.zeros(n, dtype=np.float32)
        nz = np.where(V[i] != 0)[0]
        for l in nz:
            rows = inv[l]
            s_min[rows] += np.minimum(V[i, l], V[rows, l])
        jac[i] = 1.0 - s_min / (2.0 - s_min)
    del V
    jac[jac < 0] = 0.0
    return jac


def dense_refine(dist: np.ndarray, labels: np.ndarray, tight: np.ndarray, ratio: float = 1.0) -> np.ndarray:
    """The authors' N×N formulation of the refinement rule (label-equality matrices)."""
    import torch

    d = torch.from_numpy(dist)
    lab = torch.from_numpy(labels)
    lt = torch.from_numpy(tight)
    same = (lab[None, :] == lab[:, None]).float()
    same_t = (lt[None, :] == lt[:, None]).float()
    a_per = (d * same).sum(-1) / same.sum(-1) ** 2
    a = torch.zeros(int(lab.max()) + 1, dtype=torch.float64).index_add_(0, lab, a_per.double())
    sym = same.eq(1 - same_t).float()
    del same, same_t
    cnt = 1 + sym.sum(-1)
    cnt[cnt > 1] -= 1
    b_per = (sym * d).sum(-1) / cnt**2
    b = torch.zeros(int(lt.max()) + 1, dtype=torch.float64).index_add_(0, lt, b_per.double())
    return (ratio * b[lt] <= a[lab]).numpy()


# ---------------------------------------------------------------- workers
def _final_labels(raw, keep):
    from maskcl.cluster.dbscan import singleton_labels
    from maskcl.cluster.pseudo_labels import relabel_clusters_first

    groups = singleton_labels(raw)
    groups[~keep] = groups.max() + 1 + np.arange(int((~keep).sum()))
    return relabel_clusters_first(groups)


def worker_ours(args, x) -> dict:
    from maskcl.cluster.dbscan import dbscan_sparse, singleton_labels
    from maskcl.cluster.jaccard import jaccard_from_knn
    from maskcl.cluster.knn import knn
    from maskcl.cluster.refine import refine_keep

    m = Meter()
    sims, idx = m.run("knn", knn, x, K1, backend=args.backend, mode=args.knn_mode, **approx_knobs(args))
    sub: dict[str, float] = {}
    dist = m.run("jaccard", jaccard_from_knn, x, sims, idx, K1, K2, timings=sub, upper=True)
    del sims, idx
    raw = m.run("dbscan_x2", lambda: (dbscan_sparse(dist, EPS, MIN_SAMPLES, upper=True),
                                      dbscan_sparse(dist, EPS - EPS_GAP, MIN_SAMPLES, upper=True)))
    keep = m.run("refine", refine_keep, dist, singleton_labels(raw[0]), singleton_labels(raw[1]), upper=True)
    labels, n_clusters, n_single = _final_labels(raw[0], keep)
    return m.report(labels=labels.tolist(), n_clusters=n_clusters, n_single=n_single,
                    nnz_per_row=(2 * dist.nnz - x.shape[0]) / x.shape[0], jaccard_sub=sub)


def worker_dense(args, x) -> dict:
    import faiss
    from sklearn.cluster import DBSCAN

    from maskcl.cluster.dbscan import singleton_labels

    m = Meter()

    def faiss_l2():
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        return index.search(x, K1)[1]

    rank = m.run("knn", faiss_l2)
    bad = rank[:, 0] != np.arange(x.shape[0])
    if bad.any():  # keep the reference on the same footing: self first
        from maskcl.cluster.knn import _put_self_first

        _put_self_first(np.zeros(rank.shape, np.float32), rank, np.ones(x.shape[0], np.float32))
    jac = m.run("jaccard", dense_jaccard, x, rank, K1, K2)

    def two_dbscans():
        a = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed", n_jobs=-1).fit_predict(jac)
        b = DBSCAN(eps=EPS - EPS_GAP, min_samples=MIN_SAMPLES, metric="precomputed", n_jobs=-1).fit_predict(jac)
        return a, b

    raw = m.run("dbscan_x2", two_dbscans)
    keep = m.run("refine", dense_refine, jac, singleton_labels(raw[0]), singleton_labels(raw[1]))
    labels, n_clusters, n_single = _final_labels(raw[0], keep)
    return m.report(labels=labels.tolist(), n_clusters=n_clusters, n_single=n_single)


def approx_knobs(args) -> dict:
    """The approximate kNN's knobs given on the command line (defaults: the library's)."""
    if args.knn_mode != "approx" and args.worker != "knn":
        return {}
    out = {"nprobe": args.nprobe}
    if args.nlist:
        out["nlist"] = args.nlist
    return out


def worker_knn(args, x) -> dict:
    from maskcl.cluster.knn import default_nlist, knn, recall_at_k

    out: dict = {}
    knn(x[:512], K1, backend="torch")  # warm-up of both paths (lazy library initialisation)
    knn(x[:512], K1, mode="approx")
    t0 = time.perf_counter()
    _, exact = knn(x, K1, backend="torch")
    out["torch_exact_s"] = time.perf_counter() - t0
    if not args.no_faiss:
        t0 = time.perf_counter()
        _, exact_f = knn(x, K1, backend="faiss")
        out["faiss_exact_s"] = time.perf_counter() - t0
        out["faiss_vs_torch_agree"] = float((exact_f == exact).mean())
    t0 = time.perf_counter()
    _, approx = knn(x, K1, mode="approx", **approx_knobs(args))
    out["approx_s"] = time.perf_counter() - t0
    out["approx_recall"] = recall_at_k(approx, exact)
    out["nlist"] = args.nlist or default_nlist(x.shape[0])
    out["nprobe"] = args.nprobe
    # recall restricted to the exact neighbours of the same identity (outliers excluded)
    lab = make_labels(x.shape[0], args.per_id, args.seed)
    same = (lab[exact] == lab[:, None]) & (lab[:, None] >= 0)
    offs = (np.arange(x.shape[0], dtype=np.int64) * x.shape[0])[:, None]
    found = np.isin(exact + offs, approx + offs)
    out["approx_recall_same_id"] = float(found[same].mean())
    return out


def run_worker(args) -> None:
    # a training process has torch (and faiss) loaded already: import them before the baseline
    # so that no step is charged their import time and ~400 MB of shared libraries
    import faiss  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import torch  # noqa: F401

    x, _ = make_features(args.n, args.dim, args.per_id, args.spread, args.seed)
    fn = {"ours": worker_ours, "dense": worker_dense, "knn": worker_knn}[args.worker]
    print("RESULT " + json.dumps(fn(args, x)))


def spawn(args, worker: str, n: int, extra: list[str] | None = None) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", worker, "--n", str(n), "--dim", str(args.dim),
           "--per-id", str(args.per_id), "--spread", str(args.spread), "--seed", str(args.seed),
           "--nprobe", str(args.nprobe), "--nlist", str(args.nlist)] + (extra or [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"  [{worker} N={n} failed rc={proc.returncode}] {proc.stderr[-800:]}", flush=True)
    return None


def fmt_steps(res: dict) -> str:
    parts = [f"{k} {v['s']:.2f}s/{v['peak_mb']:.0f}MB" for k, v in res["steps"].items()]
    total = sum(v["s"] for v in res["steps"].values())
    return f"{' | '.join(parts)} | total {total:.2f}s, peak {res['maxrss_mb']:.0f}MB (base {res['base_mb']:.0f}MB)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,5000,10000,28000")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--per-id", type=int, default=20)
    p.add_argument("--spread", type=float, default=1.3, help="noise norm relative to the unit centre")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dense-max", type=int, default=10000, help="largest N for the dense reference")
    p.add_argument("--backend", default="auto", help="kNN backend of 'ours'")
    p.add_argument("--knn-mode", default="exact")
    p.add_argument("--nlist", type=int, default=0, help="approx kNN: IVF lists (0 = library default ≈ 2·√N)")
    p.add_argument("--nprobe", type=int, default=8, help="approx kNN: lists searched per sample")
    p.add_argument("--no-faiss", action="store_true", help="skip the faiss timing in the kNN comparison")
    p.add_argument("--no-approx", action="store_true", help="skip the kNN comparison / approx runs")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--json", type=Path, help="also write all results here")
    p.add_argument("--worker", choices=["ours", "dense", "knn"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_worker(args)
        return

    from sklearn.metrics import adjusted_rand_score

    import torch

    print(f"# pseudo-labelling benchmark: D={args.dim}, N/{args.per_id} identities, spread {args.spread}, "
          f"k1={K1} k2={K2} eps={EPS} gap={EPS_GAP} min_samples={MIN_SAMPLES}; cpus={os.cpu_count()}, "
          f"torch threads={torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}", flush=True)
    results = {}
    for n in [int(s) for s in args.sizes.split(",")]:
        truth = make_labels(n, args.per_id, args.seed)
        row: dict = {"n": n}
        ours = spawn(args, "ours", n, ["--backend", args.backend, "--knn-mode", args.knn_mode])
        if ours is None:
            continue
        row["ours"] = ours
        lab = np.array(ours.pop("labels"))
        row["ari_ours"] = adjusted_rand_score(truth, lab)
        print(f"N={n:>6} ours : {fmt_steps(ours)}; {ours['n_clusters']} clusters, {ours['n_single']} singletons, "
              f"ARI {row['ari_ours']:.4f}, Jaccard nnz/row {ours['nnz_per_row']:.0f}", flush=True)
        if n <= args.dense_max:
            dense = spawn(args, "dense", n)
            if dense is not None:
                row["dense"] = dense
                dlab = np.array(dense.pop("labels"))
                row["ari_dense"] = adjusted_rand_score(truth, dlab)
                row["ari_ours_vs_dense"] = adjusted_rand_score(dlab, lab)
                ratios = {k: dense["steps"][k]["s"] / max(ours["steps"][k]["s"], 1e-9) for k in ours["steps"]}
                tot = sum(v["s"] for v in dense["steps"].values()) / sum(v["s"] for v in ours["steps"].values())
                mem = dense["peak_over_base_mb"] / max(ours["peak_over_base_mb"], 1)
                row["ratios"] = ratios
                print(f"N={n:>6} dense: {fmt_steps(dense)}; ARI {row['ari_dense']:.4f}", flush=True)
                print(f"N={n:>6} speed-up dense/ours: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items())
                      + f", total {tot:.1f}x; peak-over-base memory {mem:.1f}x; ARI(ours, dense) "
                      f"{row['ari_ours_vs_dense']:.6f}", flush=True)
                sub = ", ".join(f"{k.removeprefix('jaccard_').removesuffix('_s')} {v:.2f}s"
                                for k, v in ours["jaccard_sub"].items())
                print(f"N={n:>6} Jaccard sparse vs dense: {ours['steps']['jaccard']['s']:.2f}s ({sub}) vs "
                      f"{dense['steps']['jaccard']['s']:.2f}s = {ratios['jaccard']:.1f}x (goal >= 20x)", flush=True)
        else:
            gb = 3 * 4 * n * n / 1e9
            print(f"N={n:>6} dense: skipped (> --dense-max {args.dense_max}; needs ~{gb:.1f} GB for three "
                  f"N×N float32 matrices)", flush=True)
        if not args.no_approx:
            kn = spawn(args, "knn", n, ["--no-faiss"] if args.no_faiss else [])
            if kn is not None:
                row["knn"] = kn
                ap = spawn(args, "ours", n, ["--backend", "torch", "--knn-mode", "approx"])
                if ap is not None:
                    alab = np.array(ap.pop("labels"))
                    row["approx_pipeline"] = ap
                    row["ari_approx"] = adjusted_rand_score(truth, alab)
                    row["ari_approx_vs_exact"] = adjusted_rand_score(lab, alab)
                faiss_txt = (f"faiss {kn['faiss_exact_s']:.2f}s (same idx {kn['faiss_vs_torch_agree']:.5f}), "
                             if "faiss_exact_s" in kn else "")
                print(f"N={n:>6} kNN  : exact torch {kn['torch_exact_s']:.2f}s, {faiss_txt}approx (IVF nlist "
                      f"{kn['nlist']}, nprobe {kn['nprobe']}) {kn['approx_s']:.2f}s = "
                      f"{kn['torch_exact_s'] / kn['approx_s']:.2f}x faster; recall@{K1} {kn['approx_recall']:.4f} "
                      f"(same-identity neighbours {kn['approx_recall_same_id']:.4f})", flush=True)
                if ap:
                    print(f"N={n:>6} approx pipeline: knn {ap['steps']['knn']['s']:.2f}s, {ap['n_clusters']} clusters;"
                          f" ARI vs truth {row['ari_approx']:.4f} (exact {row['ari_ours']:.4f}), ARI vs exact labels "
                          f"{row['ari_approx_vs_exact']:.4f} (change {row['ari_approx'] - row['ari_ours']:+.4f})",
                          flush=True)
        results[n] = row
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
