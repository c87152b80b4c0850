"""The torch.optim baselines, registered so they can be compared with the lab's optimizers.

- ``sgd``: SGD with (heavy-ball or Nesterov) momentum, ``v <- mu v + g;  x <- x - lr v``
  ("On the importance of initialization and momentum in deep learning", Sutskever et al., 2013).
- ``adam``: ``m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  x <- x - lr m_hat / (sqrt(v_hat) + eps)``
  ("Adam: A Method for Stochastic Optimization", arXiv 1412.6980).
- ``adamw``: Adam with decoupled weight decay ``x <- x - lr (m_hat/(sqrt(v_hat)+eps) + wd x)``
  ("Decoupled Weight Decay Regularization", arXiv 1711.05101).

These are ``torch.optim`` classes themselves, not copies.
"""
import torch

from lab.registry import register

SGD = register("optimizer", "sgd",
               paper="On the importance of initialization and momentum in deep learning",
               summary="SGD with heavy-ball or Nesterov momentum (torch.optim.SGD)")(torch.optim.SGD)
Adam = register("optimizer", "adam", paper="Adam: A Method for Stochastic Optimization",
                arxiv="1412.6980", summary="Adam (torch.optim.Adam)")(torch.optim.Adam)
AdamW = register("optimizer", "adamw", paper="Decoupled Weight Decay Regularization",
                 arxiv="1711.05101", summary="AdamW (torch.optim.AdamW)")(torch.optim.AdamW)
