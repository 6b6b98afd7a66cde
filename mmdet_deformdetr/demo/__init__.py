"""Helpers of the demo (tools/demo.py): artefacts written after training, the thread-count tuner.
Registers nothing."""
from .artefacts import MetricsKeeper, draw_prediction_grid, plot_training_curves, write_coco_table
from .threads import ThreadCountTuner

__all__ = ['MetricsKeeper', 'ThreadCountTuner', 'draw_prediction_grid', 'plot_training_curves',
           'write_coco_table']
