#!/usr/bin/env python
"""kNN at ImageNet scale on this machine: a 1,281,167 x 2048 memory bank (synthetic, float16 on disk,
memory-mapped) against 50,000 queries, k 20 and 200, T 0.1: wall time and peak memory (RSS).

The bank is streamed shard by shard (simsiam_eval/knn/bank.py): never held in float32 (10.5 GB).
With ``--queries`` below 50,000 the search time is extrapolated linearly in the queries (every query
costs the same pass over the bank; the bank's normalisation passes are counted once) and the output
says so. The same run measures scikit-learn (brute force, cosine) and a naive full-matrix torch kNN
on a slice of the bank (``--calibration-rows``) and scales their memory above the data to the full
size: the memory each would need, next to what this machine has.

    python tools/benchmarks/knn_imagenet_scale.py [--queries 5000] [--data-dir /tmp/knn-imagenet]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from knn_speed import naive_torch, sklearn_knn  # the 100k benchmark's two baselines (this folder)

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES = 1_281_167, 50_000, 1000
GIB = 1 << 30


def rss_peak_bytes() -> int:
    """This process's peak RSS (VmHWM; ru_maxrss would include the parent's peak from before exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def class_noise_chunks(centres: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                       chunk: int = 65536) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, float16 rows) in chunks: the centre of each row's class plus 6 x Gaussian noise."""
    for start in range(0, len(labels), chunk):
        part = labels[start:start + chunk]
        yield start, (centres[part] + 6.0 * torch.randn(len(part), centres.shape[1], generator=generator)).half()


def make_data(folder: Path, rows: int, queries: int, dim: int, classes: int, seed: int = 0) -> Path:
    """A float16 bank file, float32 queries and labels (``.npy``), written once per size, chunk by chunk:
    class centres plus noise (the 100k benchmark's recipe), so neighbours are classes, not chance."""
    name = folder / f"bank{rows}x{dim}_q{queries}_c{classes}_s{seed}"
    if (name / "done").is_file():
        return name
    name.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    bank = np.memmap(name / "bank.f16", dtype=np.float16, mode="w+", shape=(rows, dim))
    bank_labels = torch.randint(classes, (rows,), generator=g)
    for start, rows_f16 in class_noise_chunks(centres, bank_labels, g):
        bank[start:start + len(rows_f16)] = rows_f16.numpy()
    bank.flush()
    del bank
    query_labels = torch.randint(classes, (queries,), generator=g)
    query_features = centres[query_labels] + 6.0 * torch.randn(queries, dim, generator=g)
    np.save(name / "bank_labels.npy", bank_labels.numpy())
    np.save(name / "queries.npy", query_features.numpy())
    np.save(name / "query_labels.npy", query_labels.numpy())
    (name / "done").write_text("ok\n")
    return name


def open_data(name: Path, dim: int, rows: int | None = None):
    labels = torch.from_numpy(np.load(name / "bank_labels.npy"))
    count = len(labels) if rows is None else rows
    bank = torch.from_numpy(np.memmap(name / "bank.f16", dtype=np.float16, mode="r+", shape=(len(labels), dim)))
    return (bank[:count], labels[:count], torch.from_numpy(np.load(name / "queries.npy")),
            torch.from_numpy(np.load(name / "query_labels.npy")))


def run_ours(name: Path, args) -> dict:
    from simsiam_eval.knn.classify import knn_classify

    bank, bank_labels, queries, query_labels = open_data(name, args.dim)
    before = rss_now_bytes()
    start = time.perf_counter()
    result = knn_classify(bank, bank_labels, queries, query_labels, ks=[20, 200], temperature=0.1,
                          backend=args.backend, num_classes=IMAGENET_CLASSES)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "search": result.seconds["search"], "vote": result.seconds["vote"],
            "index": result.seconds["index"], "reranked": result.reranked, "backend": result.backend,
            "top1": {k: m["top1"] for k, m in result.metrics.items()}, "peak_rss": rss_peak_bytes(),
            "rss_before": before}


def run_other(name: Path, args, method: str) -> dict:
    """scikit-learn or naive torch on the first ``--calibration-rows`` rows: memory above the data."""
    bank, bank_labels, queries, query_labels = open_data(name, args.dim, args.calibration_rows)
    bank = bank.float()  # what either needs as input
    queries = queries[:args.calibration_queries]
    base = rss_now_bytes()
    start = time.perf_counter()
    if method == "sklearn":
        sklearn_knn(bank, bank_labels, queries, 200, 0.1)
    else:
        naive_torch(bank, bank_labels, queries, 200, 0.1, IMAGENET_CLASSES)
    return {"seconds": time.perf_counter() - start, "above_data": rss_peak_bytes() - base,
            "data": base, "rows": len(bank), "queries": len(queries)}


def child(args) -> None:
    name = Path(args.child_data)
    out = run_ours(name, args) if args.child == "ours" else run_other(name, args, args.child)
    print(json.dumps(out))


def spawn(method: str, name: Path, args) -> dict:
    cmd = [sys.executable, __file__, f"--child={method}", f"--child-data={name}", f"--dim={args.dim}",
           f"--backend={args.backend}", f"--calibration-rows={args.calibration_rows}",
           f"--calibration-queries={args.calibration_queries}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=IMAGENET_TRAIN, help="bank rows (default %(default)s)")
    parser.add_argument("--queries", type=int, default=5000, help="queries run (default %(default)s; 50,000 is the full val set)")
    parser.add_argument("--dim", type=int, default=2048, help="feature width (default %(default)s)")
    parser.add_argument("--backend", default="faiss", choices=["faiss", "torch"], help="search backend")
    parser.add_argument("--data-dir", default="/tmp/knn-imagenet", help="where the synthetic bank is written (5.2 GB)")
    parser.add_argument("--calibration-rows", type=int, default=65536,
                        help="bank rows for the scikit-learn / naive memory measurement (default %(default)s)")
    parser.add_argument("--calibration-queries", type=int, default=1000, help="their queries (default %(default)s)")
    parser.add_argument("--skip-others", action="store_true", help="only our kNN")
    parser.add_argument("--child", choices=["ours", "sklearn", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    clock = time.perf_counter()
    name = make_data(Path(args.data_dir), args.rows, args.queries, args.dim, IMAGENET_CLASSES)
    bank_bytes = args.rows * args.dim * 2
    print(f"kNN at ImageNet scale: bank {args.rows:,} x {args.dim} float16 on disk ({bank_bytes / GIB:.1f} GiB, "
          f"memory-mapped; {2 * bank_bytes / GIB:.1f} GiB as float32), {args.queries:,} queries, k 20 and 200, "
          f"T 0.1, {torch.get_num_threads()} threads, data ready in {time.perf_counter() - clock:.0f} s")
    ours = spawn("ours", name, args)
    if "failed" in ours:
        print(f"  ours ({args.backend}): FAILED: {ours['failed']}")
        sys.exit(1)
    fixed = ours["index"]
    per_query = (ours["seconds"] - fixed) / args.queries
    print(f"  ours ({ours['backend']}): {ours['seconds']:.1f} s for {args.queries:,} queries (search "
          f"{ours['search']:.1f} s, vote and certification {ours['vote']:.1f} s, {ours['reranked']} re-ranked), "
          f"peak RSS {ours['peak_rss'] / GIB:.2f} GiB (bank pages mapped from disk included)")
    print(f"    top-1 k=20 {ours['top1']['20']:.2f}%, k=200 {ours['top1']['200']:.2f}%")
    if args.queries < IMAGENET_VAL:
        full = fixed + per_query * IMAGENET_VAL
        print(f"    extrapolated to {IMAGENET_VAL:,} queries (linear in the queries): {full / 60:.1f} min")
    if args.skip_others:
        return
    fp32_bank = 2 * bank_bytes
    machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    print(f"  the others need the bank in float32 ({fp32_bank / GIB:.1f} GiB) before they start; this machine has "
          f"{machine / GIB:.0f} GiB. Measured on {args.calibration_rows:,} rows, {args.calibration_queries:,} queries:")
    for method, label in (("sklearn", "scikit-learn (brute, cosine)"), ("naive", "naive full matrix (torch)")):
        r = spawn(method, name, args)
        if "failed" in r:
            print(f"  {label}: FAILED at {args.calibration_rows:,} rows: {r['failed']}")
            continue
        if method == "sklearn":  # a normalised copy of the bank (grows with the rows) plus chunked distances
            need = fp32_bank + r["above_data"] * args.rows / r["rows"]
            how = "its extra memory scaled with the rows"
        else:  # a normalised copy of the bank and the full query x bank matrix
            need = 2 * fp32_bank + 4 * IMAGENET_VAL * args.rows
            model = 4 * r["rows"] * (args.dim + r["queries"])
            how = f"normalised bank + {IMAGENET_VAL:,} x {args.rows:,} float32 similarities; that model predicts " \
                  f"{model / GIB:.2f} GiB at the measured size"
        print(f"  {label}: {r['seconds']:.1f} s, {r['above_data'] / GIB:.2f} GiB above its input; at full size "
              f"~{need / GIB:.0f} GiB ({how})")

if __name__ == "__main__":
    main()
