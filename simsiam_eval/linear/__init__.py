"""Linear-probe protocol (SimSiam / MoCo main_lincls) on frozen pool5 features.

- ``lars.py``: the LARS step (apex LARC semantics wrapping SGD).
- ``trainer.py``: the classifier, optimiser, cosine lr, epochs and the resumable ``LinearTrainer``.
- ``defaults.py``: config keys and defaults of ``simsiam-eval linear``, modes, optimisers, their lr/batch.
- ``evaluate.py``: the ``linear`` evaluation of a checkpoint (batches in protocol or cached mode, record).
"""
