"""Evaluation suites: many checkpoints x protocols x datasets from one YAML file, resumable.

``spec`` reads the suite file, ``jobs`` expands it into keyed jobs, ``run`` runs them (in-process or
through torchrun) into one results database and ``outputs`` prints the tables and writes the plots.
"""
