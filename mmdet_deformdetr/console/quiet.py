"""The messages our tools keep off the terminal: the one list, each entry with why a user loses
nothing by not seeing it.

Three kinds, each matched narrowly (where it comes from and how its text starts):

- :data:`WARNINGS`: Python warnings, ignored with ``warnings.filterwarnings`` by category,
  module (the one the warning is attributed to) and message.
- :data:`RECORDS`: log records. Those of mmengine's loggers are dropped from the screen only (the
  run's log file keeps them: :class:`~.screen.ConsoleRunner` and :func:`quiet_screen_of`); those
  of another library's logger (``logger`` names it) are dropped by a filter on that logger.
- :data:`PRINTED`: whole lines that pycocotools prints to stdout while it indexes an annotation
  file or evaluates (``print``, not logging: the only way to keep them off the screen is a filter
  on ``sys.stdout``, which :func:`install` puts in place for the tool's process).

Everything else still shows: a warning not listed here appears as Python shows it
(``tests/console/test_quiet.py`` checks that a new one does). ``--verbose`` (or
``DEFORMDETR_VERBOSE=1``) turns all of this off.
"""

import atexit
import contextlib
import io
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, TextIO, Tuple, Type


@dataclass(frozen=True)
class QuietWarning:
    """A Python warning kept off the screen."""

    category: Type[Warning]
    module: str  # regex matched at the start of the module the warning is attributed to
    message: str  # regex matched at the start of the warning's text
    why: str


@dataclass(frozen=True)
class QuietRecord:
    """A log record kept off the screen."""

    logger: str  # 'mmengine' (every MMLogger's screen handler) or a stdlib logger's name
    message: str  # regex matched at the start of the record's message
    why: str


WARNINGS: Tuple[QuietWarning, ...] = (
    QuietWarning(
        UserWarning,
        r'(mmengine\.utils\.package_utils|importlib)$',
        r'pkg_resources is deprecated as an API',
        'mmengine resolves `mmdet::` config paths with pkg_resources (and reloads it on every '
        'lookup, hence the repeats); setuptools is pinned below 81, where it still exists. Only '
        'mmengine can act on it.',
    ),
    QuietWarning(
        UserWarning,
        r'mmengine\.visualization\.visualizer$',
        r"Failed to add <class 'mmengine\.visualization\.vis_backend\.\w+'>, please provide "
        r'the `save_dir` argument',
        "DetInferencer and the drawing tools build the config's visualizer without a save_dir: "
        'they write their drawings themselves (--out-dir), the storage backends are never used.',
    ),
    QuietWarning(
        FutureWarning,
        r'copyreg$',
        r'`isinstance\(treespec, LeafSpec\)` is deprecated',
        "torch.export's own pytree code calls the deprecated API while exporting to ONNX; only "
        'torch can act on it.',
    ),
)

RECORDS: Tuple[QuietRecord, ...] = (
    QuietRecord(
        'mmengine',
        r'"FileClient" will be deprecated in future',
        "mmengine's own CheckpointHook creates a FileClient at the start of every training run.",
    ),
    QuietRecord(
        'mmengine',
        r'"HardDiskBackend" is the alias of "LocalBackend"',
        'the same FileClient, naming its local backend.',
    ),
    QuietRecord(
        'mmengine',
        r'Failed to search registry with scope "mmdet" in the "function" registry tree',
        'mmdet has no function registry of its own; the collate functions (pseudo_collate) are '
        "mmengine's, which is where mmengine then finds them.",
    ),
    QuietRecord(
        'mmengine',
        r'Distributed training is not used, all SyncBatchNorm \(SyncBN\) layers',
        'logged by every single-process run, whether the model has SyncBN layers or not; turning '
        'them into BatchNorm is what a single process needs.',
    ),
    QuietRecord(
        'torch.onnx._internal.exporter._registration',
        r'torchvision is not installed\. Skipping torchvision::',
        'the ONNX exporter registers torchvision operators when torchvision is installed; the '
        'Deformable DETR graph uses none of them.',
    ),
)

PRINTED: Tuple[str, ...] = (
    r'loading annotations into memory\.\.\.',
    r'Done \(t=\d+\.\d+s\)',
    r'creating index\.\.\.',
    r'index created!',
    r'Loading and preparing results\.\.\.',
    r'DONE \(t=\d+\.\d+s\)\.?',
    r'Running per image evaluation\.\.\.',
    r'Evaluate annotation type \*\w+\*',
    r'Accumulating evaluation results\.\.\.',
)
PRINTED_WHY = (
    "pycocotools' progress notes while it reads an annotation file and evaluates: a few lines "
    'per dataset and per evaluation, with no information a user acts on (the dataset summary '
    'and the COCO table that follow are logged).'
)


def _literal_start(pattern: str) -> str:
    """The literal text a regex of :data:`PRINTED` starts with (up to its first operator)."""
    start, escaped = '', False
    for char in pattern:
        if escaped:
            if char.isalnum():  # a character class (\d, \w): not literal
                break
            start, escaped = start + char, False
        elif char == '\\':
            escaped = True
        elif char in '()[]{}*+?.|^$':
            break
        else:
            start += char
    return start


_PRINTED = re.compile('|'.join(f'(?:{pattern})' for pattern in PRINTED))
# what a printed line starts with, to hold back a line that is not complete yet
_PRINTED_STARTS = tuple(_literal_start(pattern) for pattern in PRINTED)


class QuietRecordFilter(logging.Filter):
    """Drops the records of :data:`RECORDS` for ``logger`` (``'mmengine'``: every MMLogger)."""

    def __init__(self, logger: str = 'mmengine') -> None:
        super().__init__()
        patterns = [record.message for record in RECORDS if record.logger == logger]
        self._quiet = re.compile('|'.join(f'(?:{p})' for p in patterns)) if patterns else None

    def filter(self, record: logging.LogRecord) -> bool:
        return self._quiet is None or not self._quiet.match(str(record.getMessage()))


class QuietStream(io.TextIOBase):
    """A text stream that passes everything to ``stream`` except whole lines of :data:`PRINTED`.

    A partial line is held back only while it may still become one of those lines (it starts
    like one); anything else is written through at once, so progress bars and prompts are not
    delayed.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._pending = ''

    def write(self, text: str) -> int:
        data, self._pending = self._pending + text, ''
        *lines, last = data.split('\n')
        kept = ''.join(line + '\n' for line in lines if not _PRINTED.fullmatch(line))
        if last and any(
            start.startswith(last) or last.startswith(start) for start in _PRINTED_STARTS
        ):
            self._pending = last
        else:
            kept += last
        if kept:
            self.stream.write(kept)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def release(self) -> None:
        """Write a held-back partial line (at exit: nothing is lost)."""
        if self._pending:
            self.stream.write(self._pending)
            self._pending = ''
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> Optional[str]:  # type: ignore[override]
        return getattr(self.stream, 'encoding', None)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def install_warning_filters() -> None:
    """Ignore the warnings of :data:`WARNINGS` (and nothing else) in this process."""
    for item in WARNINGS:
        warnings.filterwarnings(
            'ignore', message=item.message, category=item.category, module=item.module
        )


def install_logger_filters() -> None:
    """Drop the records of :data:`RECORDS` from the other libraries' loggers they name."""
    for name in sorted({record.logger for record in RECORDS} - {'mmengine'}):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietRecordFilter) for f in logger.filters):
            logger.addFilter(QuietRecordFilter(name))


def install() -> None:
    """Everything of this module for the calling tool's process: the warning filters, the
    filters on other libraries' loggers, and :class:`QuietStream` as ``sys.stdout``.

    mmengine's loggers are quieted where their screen handler is made
    (:class:`~.screen.ConsoleRunner`) or, for the logger an inferencer uses, with
    :func:`quiet_screen_of`.
    """
    install_warning_filters()
    install_logger_filters()
    if not isinstance(sys.stdout, QuietStream):
        sys.stdout = QuietStream(sys.stdout)
        atexit.register(sys.stdout.release)


def screen_handlers(logger: logging.Logger) -> list:
    """The handlers of ``logger`` that write to a terminal stream (not to a file)."""
    return [
        handler
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    ]


def quiet_screen_of(logger: logging.Logger) -> None:
    """Drop the mmengine records of :data:`RECORDS` from ``logger``'s screen handlers (its file
    handlers keep them)."""
    for handler in screen_handlers(logger):
        if not any(isinstance(f, QuietRecordFilter) for f in handler.filters):
            handler.addFilter(QuietRecordFilter('mmengine'))


@contextlib.contextmanager
def mmengine_logger_at(level: int) -> Iterator[None]:
    """MMEngine's current logger at ``level`` inside the block (e.g. ``logging.WARNING``: not
    mmengine's per-parameter initialisation report, not mmdet's evaluation tables), its own level
    again afterwards, also when the block raises."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
