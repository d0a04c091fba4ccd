"""DINO's ``eval_knn.knn_classifier`` against our weighted kNN vote on the same real features.

    python tools/parity/dino_knn.py /path/to/dino [--train-size N] [--val-size M] [--cache-dir DIR]

Features: Fashion-MNIST (``/usr/share/datasets/fashion-mnist``; by default the first 20000 training
images are the bank and the first 2000 test images the queries, ``--train-size 60000 --val-size
10000`` for all of them) through a fixed network, the randomly initialised torchvision ResNet-18 of
``random:resnet18`` (seed 0): pool5 features of our evaluation transform at the native 28 px (the
images as they are, ToTensor + Normalize). DINO gets them L2-normalised as ``eval_knn.py`` does
(``nn.functional.normalize``); ours gets the same float32 tensors before normalisation and applies
that same function itself, so both vote on bit-identical unit vectors (normalising twice would move
40% of the rows by one float32 ulp).

DINO's function is called as its script calls it, except that ``num_classes`` is passed explicitly
(its default is 1000; here the data's 10 classes). Its per-query class ranking is read off the
``predictions.eq(targets)`` call it makes (the labels are handed over as a tensor subclass that
records that call), so predictions are compared, not only accuracies. Every k here is >= 5, so
DINO's top-5 of min(5, k) classes is an ordinary top-5; it cuts the queries into 100 chunks, so at
least 100 queries are needed.

Rows: our vote (FAISS and torch backends) against DINO's function run on the features in float64
(the same values; its arithmetic is then exact to ~1e-16), which must agree on every query. DINO as
``eval_knn.py`` runs it, in float32, decides near-ties by float32 rounding: the last rows allow a
query to differ from it only where DINO's own function in float64 agrees with ours (the exact
margins of such queries, k-th vs (k+1)-th neighbour and the two classes' scores, are shown).

CI guards (no DINO checkout needed), tests/test_knn.py: the top-1 / top-5 % and per-query rows at
k 10/20/100/200, T 0.07, both backends: test_exp_vote_equals_sklearn_with_exp_weights (scikit-learn's
brute-force cosine kNN weighted by exp(sim/T)), test_matches_bruteforce_numpy (a float64 numpy
re-statement with exact ties, T 0.07/0.1/0.5) and test_vote_worked_out_by_hand; the float64 rows'
near-ties: test_near_ties_follow_the_exact_float64_order and
test_exact_similarities_are_float64_dot_products; "either backend" (the float32 rows):
test_faiss_and_torch_backends_agree_exactly; DINO's quirks: test_top5_uses_min_of_5_and_k,
test_few_queries_and_classes_from_labels (fewer than 100 queries, classes from the labels).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from common import ParityReport, Row, add_reference_to_path, checkout_revision, reference_parser

from simsiam_eval.data.sizes import evaluation_size, evaluation_transform
from simsiam_eval.data.specs import open_dataset, prepare_dataset
from simsiam_eval.features import FeatureCache, extract_features, load_frozen_backbone
from simsiam_eval.knn.classify import knn_classify

DATA = "fashion-mnist:/usr/share/datasets/fashion-mnist"
NETWORK = "random:resnet18"
KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
BACKENDS = ("faiss", "torch")


class RecordedLabels(torch.Tensor):
    """Labels that keep the class ranking every ``ranking.eq(labels)`` call compares them with."""

    rankings: list[torch.Tensor] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.eq and isinstance(args[1], RecordedLabels):
            cls.rankings.append(torch.Tensor.as_subclass(args[0], torch.Tensor).clone())
        return super().__torch_function__(func, types, args, kwargs or {})


def official_vote(knn_classifier, bank, bank_labels, queries, query_labels, k: int, num_classes: int):
    """(top-1 %, top-5 %, class ranking (Q, num_classes)) of DINO's ``knn_classifier``."""
    RecordedLabels.rankings = []
    top1, top5 = knn_classifier(bank, bank_labels, queries, query_labels.as_subclass(RecordedLabels), k,
                                TEMPERATURE, num_classes=num_classes)
    return top1, top5, torch.cat(RecordedLabels.rankings)


def split_features(spec: str, size: int, cache: FeatureCache | None):
    """pool5 features (float32), labels and transform of the first ``size`` images of ``spec``."""
    parsed = prepare_dataset(spec)
    _, backbone, model_id = load_frozen_backbone(NETWORK)
    transform = evaluation_transform(evaluation_size(0, parsed), parsed)
    dataset = open_dataset(parsed, transform)
    count = min(size, len(dataset))
    description = {"model": model_id, "dataset": str(parsed), "count": count, "transform": repr(transform)}
    key = FeatureCache.key(description)
    hit = cache.load(key) if cache is not None else None
    if hit is not None:
        features, labels = hit
    else:
        features, labels = extract_features(backbone, Subset(dataset, range(count)), torch.device("cpu"),
                                            batch_size=500, workers=0, desc=str(parsed))
        if cache is not None:
            cache.save(key, features, labels, description)
    return features, labels, transform


def exact_margins(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, k: int,
                  classes: tuple[int, int], num_classes: int) -> str:
    """The exact (float64) margins of a query that float32 rounding had to beat: the k-th minus the
    (k+1)-th neighbour's similarity, and the relative gap between the scores of ``classes``."""
    sims = bank.double() @ query.double()
    top = sims.topk(min(k + 1, len(sims)))
    weights = (top.values[:k] / TEMPERATURE).exp()
    scores = torch.zeros(num_classes, dtype=torch.float64).scatter_add_(0, bank_labels[top.indices[:k]], weights)
    a, b = scores[classes[0]].item(), scores[classes[1]].item()
    margins = [f"k-boundary gap {(top.values[k - 1] - top.values[k]).item():.1e}"] if len(top.values) > k else []
    margins.append(f"class-score gap {abs(a - b) / max(a, b):.1e}" if a != b else f"equal class scores ({a:.3g})")
    return ", ".join(margins)


def disagreements(r: int):
    """Per-query disagreement tests of two class rankings: the top-1 class, and the set of the top ``r``."""
    return {"top-1 class": lambda a, b: a[:, 0] != b[:, 0],
            f"top-{r} class set": lambda a, b: (a[:, :r].sort(dim=1).values != b[:, :r].sort(dim=1).values).any(dim=1)}


def float32_rows(report: ParityReport, k: int, ours: torch.Tensor, dino32: torch.Tensor, dino64: torch.Tensor,
                 bank, bank_labels, queries, num_classes: int, accuracy: str) -> None:
    """Per-query rows against DINO as eval_knn.py runs it (float32 features).

    A query may differ only where DINO's own function, given the same features in float64, agrees
    with ours: the difference is then DINO's float32 rounding of a near-tie (its margins are shown).
    """
    r = min(5, k)
    for what, differ in disagreements(r).items():
        from_rounding = differ(ours, dino32) & ~differ(ours, dino64)
        unexplained = differ(ours, dino32) & differ(ours, dino64)
        detail = f"{accuracy}; {int(differ(ours, dino32).sum())} of {len(queries)} queries differ"
        if from_rounding.any():
            def swapped(i: int) -> tuple[int, int]:
                return ((int(ours[i, 0]), int(dino32[i, 0])) if what == "top-1 class"
                        else (int(dino32[i, r - 1]), int(dino32[i, r])))

            margins = "; ".join(f"query {i}: {exact_margins(bank, bank_labels, queries[i], k, swapped(i), num_classes)}"
                                for i in from_rounding.nonzero().flatten().tolist()[:3])
            detail += f", {int(from_rounding.sum())} where DINO in float64 agrees with ours ({margins})"
        report.rows.append(Row(f"k={k} per-query {what} vs DINO float32 (ours, either backend)",
                               float(unexplained.sum()), 0.0, detail))


def count_row(what: str, mismatches: int, total: int) -> Row:
    """A row whose difference is the number of queries that disagree (none allowed)."""
    return Row(what, float(mismatches), 0.0, f"{mismatches} of {total} queries differ")


def main() -> None:
    parser = reference_parser(__doc__.splitlines()[0], "facebookresearch/dino")
    parser.add_argument("--train-size", type=int, default=20000, help="first N training images as the bank "
                                                                      "(default 20000; 60000 for all)")
    parser.add_argument("--val-size", type=int, default=2000, help="first M test images as queries "
                                                                   "(default 2000; 10000 for all; >= 100)")
    parser.add_argument("--cache-dir", type=Path, help="keep the extracted features here for reruns")
    args = parser.parse_args()
    checkout = add_reference_to_path(args.reference, "eval_knn.py")
    from eval_knn import knn_classifier

    if args.val_size < 100:
        raise SystemExit("--val-size must be >= 100: DINO's knn_classifier splits the queries into 100 chunks")
    cache = FeatureCache(args.cache_dir) if args.cache_dir else None
    start = time.perf_counter()
    bank_features, bank_labels, transform = split_features(f"{DATA}@train", args.train_size, cache)
    query_features, query_labels, _ = split_features(f"{DATA}@test", args.val_size, cache)
    bank, queries = F.normalize(bank_features, dim=1, p=2), F.normalize(query_features, dim=1, p=2)
    num_classes = int(bank_labels.max()) + 1
    print(f"features: {len(bank)} bank / {len(queries)} query images of {DATA}, {NETWORK} (seed 0) pool5 "
          f"{bank.shape[1]}-d, transform {' '.join(repr(transform).split())}, {time.perf_counter() - start:.0f} s",
          flush=True)

    report = ParityReport(
        f"DINO eval_knn.knn_classifier vs simsiam_eval.knn.classify.knn_classify (T {TEMPERATURE}, num_classes "
        f"{num_classes} passed explicitly; Fashion-MNIST first {len(bank)} train images as the bank, first "
        f"{len(queries)} test images as queries, {NETWORK} seed 0 pool5 at 28 px, L2-normalised by F.normalize "
        "on each side)",
        f"facebookresearch/dino 7c446df ({checkout}, git: {checkout_revision(checkout)})")
    ours, seconds = {}, {}
    for backend in BACKENDS:
        clock = time.perf_counter()
        ours[backend] = knn_classify(bank_features, bank_labels, query_features, query_labels, ks=KS,
                                     temperature=TEMPERATURE, backend=backend, num_classes=num_classes)
        seconds[backend] = time.perf_counter() - clock
    total, exact_rankings = len(queries), {}
    for k in KS:
        clock = time.perf_counter()
        top1, top5, ranking = official_vote(knn_classifier, bank.double(), bank_labels, queries.double(),
                                            query_labels, k, num_classes)
        official_seconds, exact_rankings[k] = time.perf_counter() - clock, ranking
        for backend in BACKENDS:
            metrics, mine = ours[backend].metrics[k], ours[backend].rankings[k]
            report.add(f"k={k} top-1 % ({backend})", metrics["top1"], top1,
                       detail=f"{top1:.2f} % (DINO float64 {official_seconds:.1f} s)")
            report.add(f"k={k} top-5 % ({backend})", metrics["top5"], top5, detail=f"{top5:.2f} %")
            for what, differ in disagreements(min(5, k)).items():
                report.rows.append(count_row(f"k={k} per-query {what} ({backend})", int(differ(mine, ranking).sum()),
                                             total))
    for k in KS:
        top1, top5, ranking = official_vote(knn_classifier, bank, bank_labels, queries, query_labels, k, num_classes)
        accuracy = f"DINO float32 top-1 {top1:.2f} %, top-5 {top5:.2f} %"
        float32_rows(report, k, ours["faiss"].rankings[k], ranking, exact_rankings[k], bank, bank_labels, queries,
                     num_classes, accuracy)
    timings = (f"{b} {s:.1f} s ({ours[b].reranked} queries re-ranked exactly)" for b, s in seconds.items())
    print(f"ours, all k in one call: {', '.join(timings)}")
    report.finish()


if __name__ == "__main__":
    main()
