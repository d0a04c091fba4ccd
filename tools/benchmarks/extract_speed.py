#!/usr/bin/env python
"""Feature extraction speed: our extractor against a DINO ``eval_knn``-style loop, and with ``cpu_bf16``.

The cost of every kNN and cached-linear run is one backbone pass over the data. Three extractors run
on the same model, data, batch size and loader settings, in alternating rounds (machine load hits all
alike; each round starts with the next method), and print images/s (median of the rounds) and ratios:

- dino-style: the loop of DINO's eval_knn.extract_features re-stated: ``model(samples).clone()`` per
  batch, ``index_copy_`` into a (N, D) tensor allocated at the first batch, fp32;
- ours: :func:`simsiam_eval.features.extract_features` (what knn and linear call), fp32;
- ours cpu_bf16: the same with bf16 autocast and channels_last (``cpu_bf16=true``, a deviation).

The loader's share: a pass of the loader alone (decode, resize, crop, normalise; no model) gives its
images/s; its time over our fp32 extraction time is the share of the extraction a serial loader would
take (with workers it overlaps the model).

    python tools/benchmarks/extract_speed.py [--checkpoint random:resnet50] [--data fashion-mnist:DIR@test]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pretrain.train import WithIndex  # (image, index) items, as DINO's ReturnIndexDataset
from simsiam_eval.data.sizes import evaluation_size, evaluation_transform
from simsiam_eval.data.specs import open_dataset, prepare_dataset
from simsiam_eval.features import extract_features, load_frozen_backbone
from simsiam_eval.models import pool5
from simsiam_eval.precision import CPU_BF16, FP32


@torch.no_grad()
def dino_style(model, dataset: Dataset, batch_size: int, workers: int) -> torch.Tensor:
    loader = DataLoader(WithIndex(dataset), batch_size=batch_size, num_workers=workers, pin_memory=False,
                        drop_last=False)
    model.eval()
    features = None
    for samples, index in loader:
        feats = pool5(model, samples).clone()
        if features is None:
            features = torch.zeros(len(dataset), feats.shape[-1])
        features.index_copy_(0, index, feats)
    return features


def loader_only(dataset: Dataset, batch_size: int, workers: int) -> None:
    for _ in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        pass


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="random:resnet50",
                        help="checkpoint or random:ARCH[:STEM[:WIDTH]] (default %(default)s)")
    parser.add_argument("--data", default="fashion-mnist:/usr/share/datasets/fashion-mnist@test",
                        help="data set spec (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=224,
                        help="eval transform size (default %(default)s: the ImageNet protocol's)")
    parser.add_argument("--images", type=int, default=512, help="images per round (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default %(default)s)")
    args = parser.parse_args()

    size = evaluation_size(args.image_size, args.data)
    dataset = open_dataset(prepare_dataset(args.data), evaluation_transform(size, args.data, args.data))
    dataset = Subset(dataset, range(min(args.images, len(dataset))))
    _, fp32_model, _ = load_frozen_backbone(args.checkpoint)
    _, bf16_model, _ = load_frozen_backbone(args.checkpoint)
    cpu = torch.device("cpu")
    runs = {
        "dino-style loop (fp32)": lambda: dino_style(fp32_model, dataset, args.batch_size, args.workers),
        "ours (fp32)": lambda: extract_features(fp32_model, dataset, cpu, args.batch_size, args.workers, FP32,
                                                progress=False),
        "ours cpu_bf16": lambda: extract_features(bf16_model, dataset, cpu, args.batch_size, args.workers, CPU_BF16,
                                                  progress=False),
        "loader alone": lambda: loader_only(dataset, args.batch_size, args.workers),
    }
    check = dino_style(fp32_model, Subset(dataset, range(args.batch_size)), args.batch_size, 0)
    ours = extract_features(fp32_model, Subset(dataset, range(args.batch_size)), cpu, args.batch_size, 0,
                            progress=False)[0]
    if not torch.equal(check, ours):
        raise SystemExit("ours and the dino-style loop disagree on the first batch's features")
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for name, run in runs.items():  # warm-up (oneDNN kernels, worker start-up paths)
        timed(run)
    names = list(runs)
    for round_index in range(args.rounds):  # each round starts with the next method: no fixed order bias
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            rates[name].append(len(dataset) / timed(runs[name]))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"feature extraction: {args.checkpoint} at {size} px on {len(dataset):,} images of {args.data}, batch "
          f"{args.batch_size}, {args.workers} loader workers, {torch.get_num_threads()} threads, "
          f"{args.rounds} alternating rounds (median images/s)")
    base = median["dino-style loop (fp32)"]
    print(f"  ratio ours/dino-style {median['ours (fp32)'] / base:.2f}x (target >= 1.0), ours cpu_bf16/dino-style "
          f"{median['ours cpu_bf16'] / base:.2f}x (target >= 1.5); first batch: ours = dino-style, bit for bit")
    for name, value in median.items():
        print(f"  {name:24s} {value:8.1f} images/s  (rounds {', '.join(f'{r:.1f}' for r in rates[name])})")
    print(f"  loader share of our fp32 extraction: {median['ours (fp32)'] / median['loader alone']:.1%} "
          f"(the loader alone runs {median['loader alone'] / median['ours (fp32)']:.0f}x faster than the extraction)")


if __name__ == "__main__":
    main()
