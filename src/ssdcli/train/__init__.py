"""Training: :func:`fit` a :class:`~ssdcli.config.TrainConfig`, or resume a ``last.pt``.

Modules, in the order a run uses them: :mod:`~ssdcli.train.setup` (config -> :class:`TrainRun`),
:mod:`~ssdcli.train.loop` (the epochs), :mod:`~ssdcli.train.epoch` (one epoch, one step),
:mod:`~ssdcli.train.guard` (non-finite losses), :mod:`~ssdcli.train.validation` (precise BN,
validation loss and mAP), :mod:`~ssdcli.train.checkpoints` (``last.pt`` / ``best.pt``), and
beneath them :mod:`~ssdcli.train.sampling`, :mod:`~ssdcli.train.schedule`,
:mod:`~ssdcli.train.distributed` and :mod:`~ssdcli.train.rng`. Progress reaches the CLI through
:class:`Callbacks`; nothing here prints.
"""

from ssdcli.train.callbacks import Callbacks
from ssdcli.train.loop import FitResult, TrainingInterrupted, fit

__all__ = ["Callbacks", "FitResult", "TrainingInterrupted", "fit"]
