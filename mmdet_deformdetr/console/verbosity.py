"""The one switch for a full terminal: ``--verbose`` on the tools, or ``DEFORMDETR_VERBOSE=1``.

The flag sets the environment variable, so that what the tool starts (dataloader workers,
``torchrun`` workers of ``tools/dist_train.sh``) follows it too.
"""

import argparse
import os

VERBOSE_ENV = 'DEFORMDETR_VERBOSE'


def verbose() -> bool:
    """Whether the terminal shows everything (no shortened records, no quieted messages, the
    traceback of errors the tools explain)."""
    return os.environ.get(VERBOSE_ENV, '') not in ('', '0')


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """``--verbose``, for every tool the same."""
    parser.add_argument(
        '--verbose',
        action='store_true',
        help='show everything on the terminal: the whole config, environment and hook table, '
        'the messages the tools keep quiet, and the traceback of errors they explain (same as '
        f'{VERBOSE_ENV}=1)',
    )


def set_verbose(flag: bool) -> None:
    """Turn the full terminal on for this process and its children (off stays as the
    environment says)."""
    if flag:
        os.environ[VERBOSE_ENV] = '1'
