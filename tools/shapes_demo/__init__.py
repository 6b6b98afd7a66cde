"""Helpers of the demo (``tools/demo.py``, which imports this folder as ``shapes_demo``): the
artefacts written after training, the precision choice and the thread-count tuner. Tool code,
kept out of the plugin.

Imported by the tests as ``tools.shapes_demo`` (the repository root is on their path), so the
modules import each other relatively.
"""

from .artefacts import MetricsKeeper, draw_prediction_grid, plot_training_curves, write_coco_table
from .precision import choose_precision
from .threads import ThreadCountTuner

__all__ = [
    'MetricsKeeper',
    'ThreadCountTuner',
    'choose_precision',
    'draw_prediction_grid',
    'plot_training_curves',
    'write_coco_table',
]
