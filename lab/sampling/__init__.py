"""``lab.sampling``: samplers and curricula (catalog kind ``sampler``).

Which prompts to train on (balanced difficulty filtering, DUMP's UCB over sources, VADE's
Beta/Thompson selection), which rollouts and tokens to keep (D³S), how to draw each token (HAPO's
adaptive temperature) and how to steer decoding with a value model (VAS). A sampler is a small
object with ``select(...)`` and, where it learns, ``update(...)``; ``policy_optimization`` takes
one by spec (``sampler=``, ``token_selector=``, ``token_sampler=``)::

    from lab.registry import make
    sampler = make("sampler", "dump(c=1.0)", n_sources=4)
"""
