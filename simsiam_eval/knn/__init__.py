"""Weighted kNN protocol (InstDisc / DINO) on frozen pool5 features.

- ``vote.py``: the weighted vote (exp(sim/T) or uniform weights, class scores, top-1/top-5).
- ``bank.py``: the memory bank, normalised whole or shard by shard (a float16 memory-mapped bank).
- ``search.py``: neighbour search backends (FAISS, chunked torch matmuls).
- ``certify.py``: makes every backend's votes exact (float32 error bound, float64 re-ranking).
- ``classify.py``: ``knn_classify`` = search + vote + certify, for several k in one search.
- ``defaults.py``: config keys and defaults of ``simsiam-eval knn``, presets, choices.
- ``evaluate.py``: the ``knn`` evaluation of a checkpoint (features, vote, record).
- ``monitor.py``: kNN accuracy of an encoder during pretraining.
"""
