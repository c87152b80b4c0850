"""Bridges to the engines users scale to. Each imports its optional dependency only when used.

- :mod:`lab.integrations.trl`: TRL's ``GRPOTrainer`` running any registered lab advantage
  estimator and policy loss by spec string (``pip install trainlab[hf]``).
"""
