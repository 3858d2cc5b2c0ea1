"""Benchmark: pseudo-labelling (kNN + Jaccard + DBSCAN×2 + refinement), sparse vs dense.

Run by hand (never imported by the tests):

    .venv/bin/python benchmarks/cluster.py                       # N = 2k, 5k, 10k, 28k
    .venv/bin/python benchmarks/cluster.py --sizes 10000,28000,100000,200000 --no-faiss
    .venv/bin/python benchmarks/cluster.py --sizes 10000 --structure outfits --no-approx
    .venv/bin/python benchmarks/cluster.py --sizes 1000000 --approx-only   # approximate kNN only

Every step states its load (1-minute load average, and the cores the other processes used
meanwhile); a ratio whose two sides ran under different load is withheld, and the Jaccard step
is also compared interleaved (ours, dense, ours, ...) with wall and CPU seconds.

Features: N L2-normalised 2048-d vectors, gaussian blobs on the sphere around N/20 identity
centres (plus 2 % pure-noise outliers), so clustering has a ground truth for the ARI; or
(``--structure outfits``) identities of skewed sizes × 3 outfits each. Generated in row blocks.

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


def make_truth(n: int, per_id: int, seed: int, structure: str = "blobs") -> tuple[np.ndarray, np.ndarray | None]:
    """[N] identities (outliers: unique negative labels) and, for ``outfits``, [N] outfit ids."""
    if structure == "blobs":
        return make_labels(n, per_id, seed), None
    if structure != "outfits":
        raise SystemExit(f"--structure {structure!r}: expected blobs or outfits")
    ids = max(2, n // per_id)
    lab_rng = np.random.default_rng(seed)
    weights = lab_rng.lognormal(0.0, 1.0, ids)
    lab = lab_rng.choice(ids, n, p=weights / weights.sum())
    outfit = lab_rng.integers(0, 3, n)
    n_out = n // 50
    lab[:n_out] = -1 - np.arange(n_out)
    return lab, outfit


def make_features(n: int, dim: int, per_id: int, spread: float, seed: int,
                  structure: str = "blobs", block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """[N, dim] float32 unit vectors and labels [N], generated in row blocks (no N×D temporary).

    ``blobs``: gaussian blobs around N/per_id identity centres + 2 % pure-noise outliers (the
    same numbers as the earlier single-shot generator: one stream drawn in the same order).
    ``outfits``: a clothes-changing structure — identity sizes skewed (log-normal weights,
    ~5-100 images), each identity with 3 outfits (random unit directions at 0.8 of the identity
    centre's norm), so same-outfit images are closer (cos ≈ 0.5) than same-identity ones across
    outfits (≈ 0.3); 2 % outliers as in ``blobs``.
    """
    rng = np.random.default_rng(seed + 1)
    ids = max(2, n // per_id)
    lab, outfit = make_truth(n, per_id, seed, structure)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if structure == "outfits":
        dirs = rng.standard_normal((ids * 3, dim), dtype=np.float32)
        dirs *= 0.8 / np.linalg.norm(dirs, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    n_out = n // 50
    for a in range(0, n, block):
        b = min(n, a + block)
        rng.standard_normal(dtype=np.float32, out=x[a:b])
        x[a:b] *= spread / np.sqrt(dim)
        lo = max(a, n_out)
        if lo < b:
            x[lo:b] += centres[lab[lo:b]]
            if structure == "outfits":
                x[lo:b] += dirs[lab[lo:b] * 3 + outfit[lo:b]]
    x[:n_out] = rng.standard_normal((n_out, dim), dtype=np.float32)
    for a in range(0, n, block):
        x[a : a + block] /= np.linalg.norm(x[a : a + block], axis=1, keepdims=True)
    return x, lab


# ---------------------------------------------------------------- measurement
class LoadProbe:
    """The machine's load over an interval: the 1-minute load average at both ends, and the CPU
    cores the *other* processes used meanwhile (all busy jiffies of ``/proc/stat`` minus this
    process's CPU time, over the wall time) — the figure a ratio's two sides must share."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.own0 = self._own()
        self.busy0 = self._busy()
        self.load0 = os.getloadavg()[0]

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def _busy() -> float:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        vals = [int(v) for v in fields]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        own = self._own() - self.own0
        others = max(0.0, (self._busy() - self.busy0 - own) / wall)
        return {"load_start": self.load0, "load_end": os.getloadavg()[0], "others_cores": others,
                "own_cores": own / wall}


def fmt_load(ld: dict) -> str:
    return f"load {ld['load_start']:.1f}->{ld['load_end']:.1f}, others {ld['others_cores']:.2f} cores"


def same_load(a: dict, b: dict, tol: float = 0.35) -> bool:
    """Two measurements ran under the same load: the other processes' CPU use differed by at
    most ``tol`` cores (of 2) between them."""
    return abs(a["others_cores"] - b["others_cores"]) <= tol


class Meter:
    """Per-step wall time, peak RSS increase (psutil sampling thread) and load (LoadProbe)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.steps: dict[str, dict[str, float]] = {}
        self.base = self.rss()
        self.probe = LoadProbe()

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
        probe = LoadProbe()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        load = probe.stop()
        stop.set()
        th.join()
        peak[0] = max(peak[0], self.rss())
        self.steps[name] = {"s": dt, "peak_mb": (peak[0] - start_rss) / 2**20, **load}
        # progress on stderr (the parent passes it through): a run cut short still shows its steps
        print(f"  [{name}: {dt:.1f}s, peak +{self.steps[name]['peak_mb']:.0f} MB over its start, RSS now "
              f"{self.rss() / 2**20:.0f} MB; {fmt_load(load)}]", file=sys.stderr, flush=True)
        return out

    def report(self, **extra) -> dict:
        # VmHWM (this process's RSS high-water mark); ru_maxrss would carry the parent's RSS
        # over exec on Linux
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                maxrss = int(line.split()[1]) * 1024
        return {"steps": self.steps, "base_mb": self.base / 2**20, "maxrss_mb": maxrss / 2**20,
                "peak_over_base_mb": (maxrss - self.base) / 2**20, "load": self.probe.stop(), **extra}


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
    """maskcl.cluster step by step, as generate_pseudo_labels runs them (same support rule)."""
    from maskcl.cluster.dbscan import dbscan_sparse, singleton_labels
    from maskcl.cluster.jaccard import jaccard_pairs, jaccard_weights
    from maskcl.cluster.knn import knn
    from maskcl.cluster.pseudo_labels import BOUNDED_SUPPORT_MIN_N
    from maskcl.cluster.refine import refine_keep

    n = x.shape[0]
    bounded = args.support == "bounded" or (args.support == "auto" and n >= BOUNDED_SUPPORT_MIN_N)
    m = Meter()
    sims, idx = m.run("knn", knn, x, K1, backend=args.backend, mode=args.knn_mode, **approx_knobs(args))
    if args.save_idx:
        np.save(args.save_idx, idx)
    sub: dict[str, float] = {}
    pair_stats: dict = {}

    def jaccard():
        V = jaccard_weights(x, sims, idx, K1, K2, timings=sub)
        dist = jaccard_pairs(V, True, max_distance=EPS if bounded else None, timings=sub, stats=pair_stats)
        return V, dist

    V, dist = m.run("jaccard", jaccard)
    del sims, idx
    if not bounded:
        del V
    raw = m.run("dbscan_x2", lambda: (dbscan_sparse(dist, EPS, MIN_SAMPLES, upper=True),
                                      dbscan_sparse(dist, EPS - EPS_GAP, MIN_SAMPLES, upper=True)))
    groups, tight = singleton_labels(raw[0]), singleton_labels(raw[1])
    refine_stats: dict = {}

    def refine(dist):
        if bounded:  # second overlap pass: the same-cluster pairs
            dist = jaccard_pairs(V, True, groups=(groups, tight), timings=sub, key="jaccard_refine_pairs_s",
                                 stats=refine_stats)
        return refine_keep(dist, groups, tight, upper=True)

    if bounded:
        stored = dist.nnz
        del dist
        keep = m.run("refine", refine, None)
    else:
        stored = dist.nnz
        keep = m.run("refine", refine, dist)
    labels, n_clusters, n_single = _final_labels(raw[0], keep)
    return m.report(labels=labels.tolist(), n_clusters=n_clusters, n_single=n_single,
                    support="bounded" if bounded else "full",
                    # full support: distinct pairs with d < 1, both triangles, per row
                    nnz_per_row=(2 * pair_stats["support_pairs"] - n) / n,
                    stored_per_row=(2 * stored - n) / n, pair_stats=pair_stats, refine_stats=refine_stats,
                    jaccard_sub=sub)


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
    """Approximate vs exact kNN: time, recall@k1 (all / same-identity neighbours). With
    ``--exact-idx`` the exact table (saved by the ``ours`` worker) is read, not recomputed."""
    from maskcl.cluster.knn import default_nlist, knn, recall_at_k

    out: dict = {}
    knn(x[:512], K1, backend="torch")  # warm-up of both paths (lazy library initialisation)
    knn(x[:512], K1, mode="approx")
    if args.exact_idx:
        exact = np.load(args.exact_idx)
    else:
        probe = LoadProbe()
        t0 = time.perf_counter()
        _, exact = knn(x, K1, backend="torch")
        out["torch_exact_s"] = time.perf_counter() - t0
        out["torch_exact_load"] = probe.stop()
    if not args.no_faiss:
        t0 = time.perf_counter()
        _, exact_f = knn(x, K1, backend="faiss")
        out["faiss_exact_s"] = time.perf_counter() - t0
        out["faiss_vs_torch_agree"] = float((exact_f == exact).mean())
    probe = LoadProbe()
    t0 = time.perf_counter()
    _, approx = knn(x, K1, mode="approx", **approx_knobs(args))
    out["approx_s"] = time.perf_counter() - t0
    out["approx_load"] = probe.stop()
    out["approx_recall"] = recall_at_k(approx, exact)
    out["nlist"] = args.nlist or default_nlist(x.shape[0])
    out["nprobe"] = args.nprobe
    # recall restricted to the exact neighbours of the same identity (outliers excluded)
    lab = make_features_labels(args)
    same = (lab[exact] == lab[:, None]) & (lab[:, None] >= 0)
    offs = (np.arange(x.shape[0], dtype=np.int64) * x.shape[0])[:, None]
    found = np.isin(exact + offs, approx + offs)
    out["approx_recall_same_id"] = float(found[same].mean())
    return out


def worker_jaccard(args, x) -> dict:
    """The Jaccard step alone, maskcl vs the dense reference, interleaved on one kNN table.

    Rounds ``ours, dense, ours, dense, …, ours``: each dense run is compared with the mean of
    the ours runs on both sides of it, so a load change during the run hits both sides of a
    ratio alike; every run records its load (LoadProbe).
    """
    from maskcl.cluster.jaccard import jaccard_from_knn
    from maskcl.cluster.knn import knn

    sims, idx = knn(x, K1)
    jaccard_from_knn(x[:2000], *knn(x[:2000], K1), K1, K2, upper=True)  # warm-up
    runs: list[dict] = []
    for r in range(2 * args.rounds + 1):
        side = "ours" if r % 2 == 0 else "dense"
        probe = LoadProbe()
        t0, c0 = time.perf_counter(), time.process_time()
        if side == "ours":
            jac = jaccard_from_knn(x, sims, idx, K1, K2, upper=True)
            nnz = jac.nnz
        else:
            jac = dense_jaccard(x, idx, K1, K2)
        runs.append({"side": side, "s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                     **probe.stop()})
        del jac
    return {"runs": runs, "upper_nnz_per_row": nnz / x.shape[0]}


def make_features_labels(args) -> np.ndarray:
    return make_truth(args.n, args.per_id, args.seed, args.structure)[0]


def run_worker(args) -> None:
    # a training process has torch (and faiss) loaded already: import them before the baseline
    # so that no step is charged their import time and ~400 MB of shared libraries
    import faiss  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import torch  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    x, _ = make_features(args.n, args.dim, args.per_id, args.spread, args.seed, args.structure)
    fn = {"ours": worker_ours, "dense": worker_dense, "knn": worker_knn, "jaccard": worker_jaccard}[args.worker]
    print("RESULT " + json.dumps(fn(args, x)))


def spawn(args, worker: str, n: int, extra: list[str] | None = None) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", worker, "--n", str(n), "--dim", str(args.dim),
           "--per-id", str(args.per_id), "--spread", str(args.spread), "--seed", str(args.seed),
           "--structure", args.structure, "--support", args.support, "--rounds", str(args.rounds),
           "--nprobe", str(args.nprobe), "--nlist", str(args.nlist), "--threads", str(args.threads)] + (extra or [])
    print(f"  [{worker} N={n} started {time.strftime('%H:%M:%S', time.gmtime())} UTC]", file=sys.stderr, flush=True)
    try:  # stderr (progress, tracebacks) goes straight to ours
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"  [{worker} N={n} stopped after --timeout {args.timeout} s]", flush=True)
        return None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"  [{worker} N={n} failed rc={proc.returncode}; its traceback is above]", flush=True)
    return None


def fmt_steps(res: dict) -> str:
    parts = [f"{k} {v['s']:.2f}s/{v['peak_mb']:.0f}MB (others {v['others_cores']:.1f})"
             for k, v in res["steps"].items()]
    total = sum(v["s"] for v in res["steps"].values())
    return (f"{' | '.join(parts)} | total {total:.2f}s, peak {res['maxrss_mb']:.0f}MB (base {res['base_mb']:.0f}MB); "
            f"{fmt_load(res['load'])}")


def print_jaccard_ratio(n: int, res: dict, structure: str) -> dict:
    """Interleaved Jaccard runs → per-dense-run ratios against the neighbouring ours runs."""
    runs = res["runs"]
    ratios, cpu_ratios, refused = [], [], []
    for j in range(1, len(runs), 2):
        before, dense, after = runs[j - 1], runs[j], runs[j + 1]
        ours_s = (before["s"] + after["s"]) / 2
        ours_cpu = (before["cpu_s"] + after["cpu_s"]) / 2
        if same_load(before, dense) and same_load(dense, after):
            ratios.append(dense["s"] / ours_s)
            cpu_ratios.append(dense["cpu_s"] / ours_cpu)
        else:
            refused.append(j)
    for r in runs:
        print(f"N={n:>6} [{structure}] Jaccard {r['side']:>5}: {r['s']:.2f}s wall, {r['cpu_s']:.2f}s CPU; "
              f"{fmt_load(r)}", flush=True)
    if ratios:
        print(f"N={n:>6} [{structure}] Jaccard dense/ours (interleaved, same load): wall "
              + ", ".join(f"{r:.1f}x" for r in ratios) + f" (median {np.median(ratios):.1f}x), CPU "
              + ", ".join(f"{r:.1f}x" for r in cpu_ratios) + f"; goal >= 20x; upper nnz/row "
              f"{res['upper_nnz_per_row']:.0f}", flush=True)
    if refused:
        print(f"N={n:>6} [{structure}] Jaccard: {len(refused)} ratio(s) withheld: the other processes' CPU use "
              f"changed by more than 0.35 cores between the two sides", flush=True)
    return {"ratios": ratios, "cpu_ratios": cpu_ratios, "withheld": len(refused)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,5000,10000,28000")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--per-id", type=int, default=20)
    p.add_argument("--spread", type=float, default=1.3, help="noise norm relative to the unit centre")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--structure", default="blobs", choices=["blobs", "outfits"],
                   help="feature set: identity blobs, or identities × 3 outfits with skewed sizes")
    p.add_argument("--support", default="auto", choices=["auto", "full", "bounded"],
                   help="stored Jaccard pairs of 'ours' (generate_pseudo_labels' support)")
    p.add_argument("--dense-max", type=int, default=10000, help="largest N for the dense reference")
    p.add_argument("--rounds", type=int, default=2, help="dense runs of the interleaved Jaccard comparison")
    p.add_argument("--no-jaccard-ratio", action="store_true", help="skip the interleaved Jaccard comparison")
    p.add_argument("--backend", default="auto", help="kNN backend of 'ours'")
    p.add_argument("--knn-mode", default="exact")
    p.add_argument("--approx-only", action="store_true",
                   help="only the pipeline with the approximate kNN (N where exact search is out of reach)")
    p.add_argument("--nlist", type=int, default=0, help="approx kNN: IVF lists (0 = library default ≈ 2·√N)")
    p.add_argument("--nprobe", type=int, default=8, help="approx kNN: lists searched per sample")
    p.add_argument("--no-faiss", action="store_true", help="skip the faiss timing in the kNN comparison")
    p.add_argument("--no-approx", action="store_true", help="skip the kNN comparison / approx runs")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default); "
                   "on a loaded machine 1 thread avoids the 2-thread BLAS's stalls")
    p.add_argument("--json", type=Path, help="also write all results here")
    p.add_argument("--worker", choices=["ours", "dense", "knn", "jaccard"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--save-idx", help=argparse.SUPPRESS)
    p.add_argument("--exact-idx", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_worker(args)
        return

    import tempfile

    from sklearn.metrics import adjusted_rand_score

    import torch

    print(f"# pseudo-labelling benchmark {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: D={args.dim}, "
          f"{args.structure}, N/{args.per_id} identities, spread {args.spread}, k1={K1} k2={K2} eps={EPS} "
          f"gap={EPS_GAP} min_samples={MIN_SAMPLES}, support {args.support}; cpus={os.cpu_count()}, torch "
          f"threads={args.threads or torch.get_num_threads()}, load avg {'/'.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    results = {}
    tmp = tempfile.TemporaryDirectory(prefix="maskcl-bench-")
    for n in [int(s) for s in args.sizes.split(",")]:
        truth = make_truth(n, args.per_id, args.seed, args.structure)[0]
        row: dict = {"n": n}
        if args.approx_only:
            ap = spawn(args, "ours", n, ["--backend", "torch", "--knn-mode", "approx"])
            if ap is None:
                continue
            alab = np.array(ap.pop("labels"))
            row["approx_pipeline"] = ap
            row["ari_approx"] = adjusted_rand_score(truth, alab)
            print(f"N={n:>7} approx pipeline: {fmt_steps(ap)}; {ap['n_clusters']} clusters, {ap['n_single']} "
                  f"singletons, ARI vs truth {row['ari_approx']:.4f}; support {ap['support']}: Jaccard pairs d<1 "
                  f"{ap['nnz_per_row']:.0f}/row, stored {ap['stored_per_row']:.1f}/row (+ refinement pairs "
                  f"{ap['refine_stats'].get('stored_pairs', 0) / n:.1f}/row)", flush=True)
            results[n] = row
            continue
        idx_path = str(Path(tmp.name) / f"exact-{n}.npy")
        ours = spawn(args, "ours", n, ["--backend", args.backend, "--knn-mode", args.knn_mode]
                     + ([] if args.no_approx else ["--save-idx", idx_path]))
        if ours is None:
            continue
        row["ours"] = ours
        lab = np.array(ours.pop("labels"))
        row["ari_ours"] = adjusted_rand_score(truth, lab)
        print(f"N={n:>7} ours : {fmt_steps(ours)}; {ours['n_clusters']} clusters, {ours['n_single']} singletons, "
              f"ARI {row['ari_ours']:.4f}; support {ours['support']}: Jaccard pairs d<1 {ours['nnz_per_row']:.0f}/row, "
              f"stored {ours['stored_per_row']:.1f}/row", flush=True)
        if n <= args.dense_max:
            dense = spawn(args, "dense", n)
            if dense is not None:
                row["dense"] = dense
                dlab = np.array(dense.pop("labels"))
                row["ari_dense"] = adjusted_rand_score(truth, dlab)
                row["ari_ours_vs_dense"] = adjusted_rand_score(dlab, lab)
                print(f"N={n:>7} dense: {fmt_steps(dense)}; ARI {row['ari_dense']:.4f}; ARI(ours, dense) "
                      f"{row['ari_ours_vs_dense']:.6f}", flush=True)
                if same_load(ours["load"], dense["load"]):
                    ratios = {k: dense["steps"][k]["s"] / max(ours["steps"][k]["s"], 1e-9) for k in ours["steps"]}
                    tot = (sum(v["s"] for v in dense["steps"].values())
                           / sum(v["s"] for v in ours["steps"].values()))
                    mem = dense["peak_over_base_mb"] / max(ours["peak_over_base_mb"], 1)
                    row["ratios"] = ratios
                    print(f"N={n:>7} speed-up dense/ours: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items())
                          + f", total {tot:.1f}x; peak-over-base memory {mem:.1f}x", flush=True)
                else:
                    print(f"N={n:>7} speed-up dense/ours: withheld (others' CPU {ours['load']['others_cores']:.2f} "
                          f"vs {dense['load']['others_cores']:.2f} cores during the two runs)", flush=True)
            if not args.no_jaccard_ratio:
                jr = spawn(args, "jaccard", n)
                if jr is not None:
                    row["jaccard_interleaved"] = jr
                    row["jaccard_ratio"] = print_jaccard_ratio(n, jr, args.structure)
        else:
            gb = 3 * 4 * n * n / 1e9
            print(f"N={n:>7} dense: skipped (> --dense-max {args.dense_max}; needs ~{gb:.1f} GB for three "
                  f"N×N float32 matrices)", flush=True)
        if not args.no_approx:
            extra = ["--exact-idx", idx_path] + (["--no-faiss"] if args.no_faiss else [])
            kn = spawn(args, "knn", n, extra)
            if kn is not None:
                kn.setdefault("torch_exact_s", ours["steps"]["knn"]["s"])
                row["knn"] = kn
                ap = spawn(args, "ours", n, ["--backend", "torch", "--knn-mode", "approx"])
                if ap is not None:
                    alab = np.array(ap.pop("labels"))
                    row["approx_pipeline"] = ap
                    row["ari_approx"] = adjusted_rand_score(truth, alab)
                    row["ari_approx_vs_exact"] = adjusted_rand_score(lab, alab)
                faiss_txt = (f"faiss {kn['faiss_exact_s']:.2f}s (same idx {kn['faiss_vs_torch_agree']:.5f}), "
                             if "faiss_exact_s" in kn else "")
                print(f"N={n:>7} kNN  : exact torch {kn['torch_exact_s']:.2f}s, {faiss_txt}approx (IVF nlist "
                      f"{kn['nlist']}, nprobe {kn['nprobe']}) {kn['approx_s']:.2f}s ({fmt_load(kn['approx_load'])}); "
                      f"recall@{K1} {kn['approx_recall']:.4f} (same-identity neighbours "
                      f"{kn['approx_recall_same_id']:.4f})", flush=True)
                if ap:
                    print(f"N={n:>7} approx pipeline: {fmt_steps(ap)}; {ap['n_clusters']} clusters; ARI vs truth "
                          f"{row['ari_approx']:.4f} (exact {row['ari_ours']:.4f}), ARI vs exact labels "
                          f"{row['ari_approx_vs_exact']:.4f}; Jaccard pairs d<1 {ap['nnz_per_row']:.0f}/row", flush=True)
        results[n] = row
        if os.path.exists(idx_path):
            os.remove(idx_path)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
