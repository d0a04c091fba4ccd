#!/usr/bin/env python
"""kNN speed and memory: our FAISS path vs scikit-learn and vs a naive full-matrix torch implementation.

``ours-bf16`` picks the candidates by a bfloat16 matmul (knn.search_precision=bfloat16), re-scores them
in float32 and hands the queries it cannot settle to FAISS: the same predictions by construction.

Each method runs in its own process on the same synthetic features (100k x 512 bank, 10k queries,
100 classes by default) and reports wall time and peak memory above the data (peak RSS of the
process minus its RSS once the features are loaded). All methods compute the same weighted vote
(exp(sim/T), k=200, T=0.1); the script also checks that they predict the same classes. Our methods
also print their search and vote time and how many queries the certified vote re-ranked exactly.
``--collapsed`` makes the features of a partly collapsed run (half the rows all-zero, 30% one shared
vector): thousands of exact ties at every k boundary, the worst case of the exact re-ranking (where the
other methods break ties arbitrarily, their predictions may differ there).

    python tools/benchmarks/knn_speed.py [--bank 100000] [--queries 10000] [--dim 512] [--collapsed]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

METHODS = ("ours-faiss", "ours-bf16", "ours-torch", "naive-torch", "sklearn")


def synthetic(bank: int, queries: int, dim: int, classes: int, collapsed: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.randint(classes, (bank + queries,), generator=g)
    feats = centres[labels] + 6.0 * torch.randn(bank + queries, dim, generator=g)
    if collapsed:
        kind = torch.randint(10, (bank + queries,), generator=g)
        feats[kind < 5] = 0.0
        feats[(kind >= 5) & (kind < 8)] = centres[0]
    return feats[:bank], labels[:bank], feats[bank:], labels[bank:]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def naive_torch(train, train_labels, val, k, temperature, classes):
    """What colab/DINO-style code does without chunking: the full N_val x N_train similarity matrix."""
    bank, queries = torch.nn.functional.normalize(train, dim=1), torch.nn.functional.normalize(val, dim=1)
    sims = queries @ bank.T
    top = sims.topk(k, dim=1)
    weights = (top.values / temperature).exp()
    scores = torch.zeros(len(val), classes).scatter_add_(1, train_labels[top.indices], weights)
    return scores.argmax(dim=1)


def sklearn_knn(train, train_labels, val, k, temperature):
    from sklearn.neighbors import KNeighborsClassifier

    def weights(distances):  # cosine distance d = 1 - sim
        return np.exp((1.0 - distances) / temperature)

    model = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights=weights)
    return torch.from_numpy(model.fit(train.numpy(), train_labels.numpy()).predict(val.numpy()))


def run_one(method: str, args) -> dict:
    train, train_labels, val, val_labels = synthetic(args.bank, args.queries, args.dim, args.classes, args.collapsed)
    base = rss_mb()
    start = time.perf_counter()
    detail = ""
    if method.startswith("ours"):
        from simsiam_eval.knn.classify import knn_classify

        reduced = method == "ours-bf16"  # bfloat16 candidates, FAISS for the queries they cannot settle
        result = knn_classify(train, train_labels, val, val_labels, ks=[args.k], temperature=args.temperature,
                              backend="faiss" if reduced else method.split("-")[1],
                              search_precision="bfloat16" if reduced else "float32")
        predictions = result.rankings[args.k][:, 0]
        detail = (f"   (search {result.seconds['search']:.2f} s, vote {result.seconds['vote']:.2f} s, "
                  f"{result.reranked} re-ranked"
                  + (f", {result.searched_again} searched again in float32" if reduced else "") + ")")
    elif method == "naive-torch":
        predictions = naive_torch(train, train_labels, val, args.k, args.temperature, args.classes)
    else:
        predictions = sklearn_knn(train, train_labels, val, args.k, args.temperature)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
    top1 = 100.0 * (predictions == val_labels).double().mean().item()
    return {"method": method, "seconds": seconds, "peak_mb": peak - base, "top1": top1,
            "detail": detail, "predictions": predictions.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=int, default=100_000, help="memory-bank rows (default %(default)s)")
    parser.add_argument("--queries", type=int, default=10_000, help="query rows (default %(default)s)")
    parser.add_argument("--dim", type=int, default=512, help="feature width (default %(default)s)")
    parser.add_argument("--classes", type=int, default=100, help="classes (default %(default)s)")
    parser.add_argument("--k", type=int, default=200, help="neighbours (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.1, help="T (default %(default)s)")
    parser.add_argument("--collapsed", action="store_true",
                        help="features of a partly collapsed run: half zero, 30%% one shared vector")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="what to run")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per method, interleaved; the fastest counts (on a shared machine)")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args)))
        return
    passthrough = [f"--bank={args.bank}", f"--queries={args.queries}", f"--dim={args.dim}",
                   f"--classes={args.classes}", f"--k={args.k}", f"--temperature={args.temperature}"]
    passthrough += ["--collapsed"] if args.collapsed else []
    print(f"kNN benchmark: bank {args.bank} x {args.dim}{' (collapsed)' if args.collapsed else ''}, "
          f"{args.queries} queries, k={args.k}, T={args.temperature}, "
          f"{torch.get_num_threads()} threads")
    results = {}
    for _ in range(args.repeat):
        for method in args.methods:
            out = subprocess.run([sys.executable, __file__, f"--child={method}", *passthrough], capture_output=True,
                                 text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"  {method:12s} {r['seconds']:8.2f} s   peak +{r['peak_mb']:8.0f} MB   top-1 {r['top1']:.2f}%"
                  f"{r['detail']}", flush=True)
            if method not in results or r["seconds"] < results[method]["seconds"]:
                results[method] = r
    reference = results.get("ours-faiss")
    if reference is None:
        return
    if args.repeat > 1:
        print("fastest of each:")
        for method, r in results.items():
            print(f"  {method:12s} {r['seconds']:8.2f} s   peak +{r['peak_mb']:8.0f} MB")
    print("ratios (time of the other / time of ours-faiss; memory of ours-faiss / memory of the other):")
    for method, r in results.items():
        if method == "ours-faiss":
            continue
        agree = np.mean(np.array(r["predictions"]) == np.array(reference["predictions"])) * 100
        print(f"  vs {method:12s} speed-up {r['seconds'] / reference['seconds']:6.2f}x   memory "
              f"{reference['peak_mb'] / max(r['peak_mb'], 1):5.2f}x   same top-1 prediction {agree:.2f}%")


if __name__ == "__main__":
    main()
