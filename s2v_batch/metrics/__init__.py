"""Classification figures, score histograms, scanning time saved, agreement with a survey score.

The figures of :mod:`.classification` are re-exported here (``from s2v_batch import metrics;
metrics.roc_auc(scores, labels)``); :mod:`.histogram` (``ScoreHistogram``), :mod:`.timesaved` and
:mod:`.agreement` are imported by name.
"""

from s2v_batch.metrics.classification import *  # noqa: F403
from s2v_batch.metrics.classification import __all__  # noqa: F401
