"""lab.continual: continual learning, one module per algorithm.

- ``metrics``: continual evaluation (min-ACC, WC-ACC, windowed forgetting), registered as
  ``continual/stability_gap``.
- ``ibcl``: IBCL's credal-set knowledge base and zero-shot preference models (``continual/ibcl``).
- ``useful``: USEFUL's clustering and upsampling against simplicity bias (``continual/useful``).
- ``cpt``: batch plans of continual pre-training strategies (``continual/cpt_strategies``).
"""
