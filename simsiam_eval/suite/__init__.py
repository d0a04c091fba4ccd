"""Evaluation suites: many checkpoints x protocols x data sets, run and resumed as one job list."""
