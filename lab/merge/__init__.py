"""lab.merge: combine several trained models into one (``mwa``) or into an ensemble (``ensemble``)."""
from lab.merge.ensemble import Ensemble, distill
from lab.merge.mwa import average_state_dicts, mwa, mwa_weights

__all__ = ["Ensemble", "average_state_dicts", "distill", "mwa", "mwa_weights"]
