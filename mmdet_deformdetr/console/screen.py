"""What a training or test run shows on the terminal, and what only its log file keeps.

mmengine's ``Runner`` logs three long records while it is built: the system environment (about
35 lines), the whole config (hundreds of lines) and the hook table (about 100 lines). They are
worth keeping, in the run's log file (``work_dir/<timestamp>/<timestamp>.log``); on the screen
they bury the lines a user looks for. :class:`ConsoleRunner` is mmengine's ``Runner`` whose screen
handler shows a one-line version of each (the log file gets the records unchanged), drops the
records of :data:`~.quiet.RECORDS`, and which logs two lines of its own once built: what model
it runs and where its files go. Nothing else changes: the same hooks, loops and checkpoints.
With ``--verbose`` (``DEFORMDETR_VERBOSE=1``) the screen shows everything, as mmengine's.
"""

import copy
import logging
import os.path as osp
import re
from typing import Callable, List, Optional

from mmengine.runner import Runner
from torch import nn

from .quiet import quiet_screen_of, screen_handlers
from .verbosity import verbose

_ENVIRONMENT = re.compile(r'\n-{60}\nSystem environment:')
_CONFIG = 'Config:\n'
_HOOKS = 'Hooks will be executed in the following order:\n'


def _environment_line(message: str) -> str:
    values = dict(re.findall(r'^ {4}([^:\n]+): ?(.*)$', message, flags=re.MULTILINE))
    python = values.get('Python', '?').split(' ')[0]
    software = [
        f'Python {python}',
        f'PyTorch {values.get("PyTorch", "?")}',
        f'MMEngine {values.get("MMEngine", "?")}',
        f'CUDA available: {values.get("CUDA available", "?")}',
    ]
    # mmengine's labels; its "GPU number" is the number of processes, on a CPU too
    run = [
        f'{label}: {values.get(label, "?")}'
        for label in ('seed', 'Distributed launcher', 'Distributed training')
    ] + [f'processes: {values.get("GPU number", "?")}']
    return f'Environment: {", ".join(software)}; {", ".join(run)} (in full: the log file)'


def _hooks_line(message: str) -> str:
    names: List[str] = []
    for name in re.findall(r'^\(\s*\w+\s*\) (\w+)', message, flags=re.MULTILINE):
        if name not in names:
            names.append(name)
    return f'Hooks: {", ".join(names)} (the order of each stage: in the log file)'


class ScreenFormatter(logging.Formatter):
    """Formats a record with ``formatter`` (mmengine's, colours and all), after replacing a message
    that ``shorten`` returns a short version of. The record itself is not changed, so the other
    handlers (the log file) still get the whole message."""

    def __init__(self, formatter: logging.Formatter, shorten: Callable[[str], Optional[str]]):
        super().__init__()
        self.formatter = formatter
        self.shorten = shorten

    def format(self, record: logging.LogRecord) -> str:
        short = self.shorten(record.getMessage())
        if short is not None:
            record = copy.copy(record)
            record.msg, record.args = short, None
        return self.formatter.format(record)


def describe_model(model: nn.Module) -> str:
    """One line: the detector's class, the facts of a Deformable DETR that it has, parameters."""
    model = getattr(model, 'module', model)  # a DDP wrapper's module
    facts = []
    if getattr(model, 'as_two_stage', False):
        facts.append('two-stage + box refinement')
    elif getattr(model, 'with_box_refine', False):
        facts.append('box refinement')
    backbone = getattr(model, 'backbone', None)
    if backbone is not None:
        depth = getattr(backbone, 'depth', None)
        facts.append(f'{type(backbone).__name__}{f"-{depth}" if depth else ""} backbone')
    if getattr(model, 'num_feature_levels', None):
        facts.append(f'{model.num_feature_levels} feature levels')
    transformer = getattr(model, 'transformer', None)
    layers = [
        len(getattr(getattr(transformer, part, None), 'layers', ()))
        for part in ('encoder', 'decoder')
    ]
    if all(layers):
        facts.append(f'{layers[0]} + {layers[1]} layers')
    if getattr(model, 'embed_dims', None):
        facts.append(f'{model.embed_dims}-d')
    if getattr(model, 'num_queries', None):
        facts.append(f'{model.num_queries} queries')
    classes = getattr(getattr(model, 'bbox_head', None), 'num_classes', None)
    if classes:
        facts.append(f'{classes} classes')
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = f'{total / 1e6:.2f} M parameters ({trained / 1e6:.2f} M trainable)'
    return (
        f'Model: {type(model).__name__}'
        + (f' ({", ".join(facts)})' if facts else '')
        + (f'; {size}')
    )


class ConsoleRunner(Runner):
    """mmengine's ``Runner`` with a screen worth reading (see the module docstring).

    Built like mmengine's (``ConsoleRunner.from_cfg(cfg)``); the tools build theirs with it.
    """

    def build_logger(self, log_level='INFO', log_file=None, **kwargs):
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        if not verbose():
            quiet_screen_of(logger)
            for handler in screen_handlers(logger):
                if not isinstance(handler.formatter, ScreenFormatter):
                    handler.setFormatter(ScreenFormatter(handler.formatter, self._short_version))
        return logger

    @property
    def log_file(self) -> Optional[str]:
        """The run's log file (mmengine's ``FileHandler``), None before the logger exists."""
        logger = getattr(self, 'logger', None)
        files = [h for h in getattr(logger, 'handlers', []) if isinstance(h, logging.FileHandler)]
        return files[0].baseFilename if files else None

    def _short_version(self, message: str) -> Optional[str]:
        if _ENVIRONMENT.match(message):
            return _environment_line(message)
        if message.startswith(_CONFIG):
            where = self.log_file or 'the log file'
            if self.cfg.filename is not None:
                where += f' and {osp.join(self.work_dir, osp.basename(self.cfg.filename))}'
            return f'Config: {self.cfg.filename or "(built in code)"} (in full: {where})'
        if message.startswith(_HOOKS):
            return _hooks_line(message)
        return None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.logger.info(describe_model(self.model))
        self.logger.info(f'Work dir: {self.work_dir}; log: {self.log_file}')
