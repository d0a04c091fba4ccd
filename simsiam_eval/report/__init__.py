"""Tables and plots built from result records (``simsiam_eval.results``) and published numbers."""
