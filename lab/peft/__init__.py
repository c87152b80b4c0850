"""lab.peft: parameter-efficient fine-tuning. Adapters wrap a frozen ``nn.Linear``; ``merge()``
folds the update back into the weight (the merged model computes what the adapted one computes).

    n_trainable = lab.peft.apply(model, "lora", target=("q_proj", "v_proj"), rank=8)
    ...train...
    lab.peft.merge(model)

Methods (registry kind ``peft``): ``lora``, ``adalora`` (with :class:`RankAllocator`), ``hut``,
``loku`` (FILA init + the inverted hinge loss), ``ist`` (importance-aware layer selection) and
``glad`` (SAM-steered gradient for LoRA).
"""
from lab.peft.adalora import AdaLoRALinear, RankAllocator, budget_schedule, orthogonal_regularizer
from lab.peft.core import AdapterLinear, adapters, apply, merge, trainable_count, unmerge
from lab.peft.glad import GLAD
from lab.peft.hut import HUTLinear
from lab.peft.ist import IST, select_layers
from lab.peft.loku import FILALinear, fila_init, fila_initialize, fisher_diagonal
from lab.peft.lora import LoRALinear

__all__ = ["AdapterLinear", "AdaLoRALinear", "FILALinear", "GLAD", "HUTLinear", "IST", "LoRALinear",
           "RankAllocator", "adapters", "apply", "budget_schedule", "fila_init", "fila_initialize",
           "fisher_diagonal", "merge", "orthogonal_regularizer", "select_layers", "trainable_count", "unmerge"]
