"""What the tools show on the terminal.

- ``quiet.py``: the one list of messages kept off the screen (warnings, log records, pycocotools'
  printed notes), each with why it is safe to hide.
- ``screen.py``: :class:`ConsoleRunner`, mmengine's ``Runner`` whose screen shows one line for the
  environment, the config and the hook table (the log file keeps them whole), then the model
  and where the run's files go.
- ``errors.py``: the errors the tools explain in one message, without a traceback.
- ``verbosity.py``: ``--verbose`` / ``DEFORMDETR_VERBOSE=1``, which shows everything.

A tool calls :func:`start_tool` first and runs inside :class:`explained_errors`.
"""

from .errors import ConfigError, config_errors, explain, explained_errors
from .quiet import install as install_quiet
from .quiet import install_warning_filters, quiet_screen_of
from .screen import ConsoleRunner, describe_model
from .verbosity import VERBOSE_ENV, add_verbose_argument, set_verbose, verbose

__all__ = [
    'VERBOSE_ENV',
    'ConfigError',
    'ConsoleRunner',
    'add_verbose_argument',
    'config_errors',
    'describe_model',
    'explain',
    'explained_errors',
    'install_quiet',
    'install_warning_filters',
    'quiet_screen_of',
    'set_verbose',
    'start_tool',
    'verbose',
]


def start_tool(verbose_flag: bool = False) -> None:
    """What every tool does first: ``--verbose`` recorded for the process and its children;
    unless verbose, the messages of ``quiet.py`` kept off the screen (also on the screen of the
    logger that mmdet's inferencers use)."""
    set_verbose(verbose_flag)
    if verbose():
        return
    from mmengine.logging import MMLogger

    install_quiet()
    quiet_screen_of(MMLogger.get_current_instance())
