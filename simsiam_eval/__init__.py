"""simsiam-eval: SimSiam pretraining and standard SSL evaluation protocols."""

__version__ = "0.1.0"
