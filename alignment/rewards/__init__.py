"""Reward models: learn the user's taste from a few votes, and score candidates with it.

:mod:`.base` is the signature every reward model has (a prompt and its candidates in, scores per
dimension out), the programmatic rewards modalities declare and ensembles; :mod:`.learned` trains a
head over the generator's own features on the user's judgments with Bradley-Terry with ties
(:mod:`.bt`); :mod:`.service` finds reward models by name, trains and stores them.
"""
from .active import least_sure_first, preference
from .base import ENSEMBLES, Ensemble, Programmatic, RewardModel, programmatic, win_share
from .bt import bt_ties_nll, log_outcome_probabilities, preference_probability

__all__ = ["least_sure_first", "preference", "ENSEMBLES", "Ensemble", "Programmatic", "RewardModel", "bt_ties_nll", "log_outcome_probabilities",
           "preference_probability", "programmatic", "win_share"]
