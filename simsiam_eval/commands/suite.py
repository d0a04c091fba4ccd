"""``simsiam-eval suite SUITE.yaml [key=value ...] [--dry-run] [--only JOBS] [--launcher local] [--nproc N]``."""
from __future__ import annotations

import argparse

LAUNCHERS = ("local", "slurm")

EXAMPLE = """\
suite file (YAML; _BASE_ works; packaged suites by name: suites/NAME):

  name: mine                     # tags every record; default: the file name
  output_dir: runs/suites/mine   # jobs/<job>/, logs/<job>.log, tables/, plots/ (default runs/suites/<name>)
  results: ""                    # results database (default: output_dir/results.db)
  cache_dir: ""                  # feature cache (default: the normal one); shared by kNN and cached linear
  checkpoints:                   # each: name, one of path | glob | random, optional tags, format
    - {name: mine, path: ckpts/checkpoint_0099.pth.tar, tags: [simsiam]}
    - {name: sweep, glob: "runs/pretrain/checkpoint_*.pth.tar"}   # one checkpoint per file: sweep/<stem>
    - {name: random-init, random: resnet50}
  pretrain:                      # optional: its final checkpoint is evaluated under the run's name
    - {name: shapes-run, config: pretrain/shapes_cpu, overrides: [epochs=5], init: shapes-init}
                                 # init: evaluate its initial weights (init.pth.tar) too, under that name
    - {name: shapes-seeds, config: pretrain/shapes_cpu, seeds: [0, 1, 2]}
                                 # seeds: one run per seed, named shapes-seeds/seed0 ... (a study row: the
                                 # majority verdict, kNN top-1 as mean ± std)
  seeds: null                    # optional: seeds for every pretrain entry without its own (seeds=[0,1,2])
  datasets:
    fmnist: {train: "fashion-mnist:/usr/share/datasets/fashion-mnist@train",
             val: "fashion-mnist:/usr/share/datasets/fashion-mnist@test"}
  evaluations:                   # protocol + that protocol's config keys (see its --help)
    knn: {protocol: knn, preset: dino, datasets: [fmnist]}
    linear: {protocol: linear, mode: cached, optimizer: sgd, epochs: 10, datasets: [fmnist]}
    voc07: {protocol: transfer, task: voc07, trials: 5}
  jobs:                          # optional: these jobs instead of checkpoints x evaluations x datasets
    - {checkpoint: mine, evaluation: knn, dataset: fmnist}
  study: ""                      # optional: simsiam_study (or a path): the SimSiam paper's study tables and
                                 # plots; each name of the file must be a pretrain entry (README: Study report)

Relative paths are read from the working folder. A job's key is the sha256 of its checkpoint (the file's
sha256, or the random: spec), protocol, resolved config and data; a job whose key the results database
holds is skipped, so a killed suite re-run continues where it stopped. key=value overrides set suite
keys, e.g. output_dir=/tmp/x evaluations.knn.k=[20]. The exit status is the number of failed jobs.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "suite", help="run an evaluation suite: checkpoints x protocols x data sets, resumable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Expand a suite file into jobs (checkpoints x evaluations x data sets, or its explicit "
                    "job list; pretraining runs first), skip the jobs already recorded in the suite's results "
                    "database, run the rest (a failing job is reported, the others go on), then print the "
                    "suite's tables and write its plots.",
        epilog=EXAMPLE)
    parser.add_argument("suite", metavar="SUITE.yaml", help="suite file, or a packaged suite: suites/NAME")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a suite key")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and their state (done, left, "
                                                               "waiting) and exit")
    parser.add_argument("--only", metavar="JOBS", help="run only these jobs: comma-separated job names or "
                                                       "key prefixes (as --dry-run shows them)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: jobs in sequence on this machine (default); slurm: each job a Slurm job "
                             "through submitit (the suite file's launcher: section; launcher.KEY=VALUE)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="processes per job; N > 1 runs each job through torchrun --nproc_per_node N")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.errors import UserError
    from simsiam_eval.suite.run import run_suite
    from simsiam_eval.suite.spec import read_suite

    if args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    suite = read_suite(args.suite, args.overrides)
    if args.launcher == "slurm" and not args.dry_run:
        from simsiam_eval.suite.run import run_suite_on_slurm

        return run_suite_on_slurm(suite, only=args.only)
    return run_suite(suite, only=args.only, dry_run=args.dry_run, nproc=args.nproc)
