"""Errors the tools explain: one message that says what to do, and no traceback on the screen.

The explained errors:

- :class:`~mmdet_deformdetr.checkpoint.CheckpointError` (refused, damaged, unknown, another
  variant, heads of another class count, nothing to resume);
- :class:`~mmdet_deformdetr.datasets.BadDataError` (missing images, classes that disagree ...);
- :class:`ConfigError`: a config that does not load or build (the tools raise it around
  ``Config.fromfile`` and the building of the runner), and mmengine's "is not in the ...
  registry" wherever it happens;
- a checkpoint that cannot be read where a setting asked for it: a failed download
  (``load_from``, a backbone's ``init_cfg``, ``open-mmlab://``, a URL given to a tool) or a missing
  file (``deformdetr://``, a plain path). The message names the URL, the setting and the
  ``--cfg-options`` that runs without it.

The traceback still exists: it is written to the run's log file when there is one, and
``--verbose`` (``DEFORMDETR_VERBOSE=1``) prints it as Python does. Every other exception keeps its
traceback.
"""

import contextlib
import http.client
import logging
import re
import ssl
import traceback
import urllib.error
from typing import Any, Iterator, List, Optional, Tuple

from .verbosity import verbose

_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)
_REGISTRY_MISS = re.compile(r'.* is not in the \S+ registry')
# what a config that does not load or build raises (mmengine re-raises the errors of a
# constructor with the same type, naming the class)
_CONFIG_PROBLEMS = (
    AssertionError,
    AttributeError,
    FileNotFoundError,
    ImportError,
    KeyError,
    NameError,
    SyntaxError,
    TypeError,
    ValueError,
)


class ConfigError(Exception):
    """A config that does not load or build; the message names the file and the cause."""


@contextlib.contextmanager
def config_errors(config: str) -> Iterator[None]:
    """Raise the errors of a config that does not load or build (assertions, missing keys or files,
    wrong types or values, unknown imports) as a :class:`ConfigError` naming ``config``; errors
    explained on their own (a checkpoint's, a download's) and any other exception pass unchanged."""
    try:
        yield
    except _CONFIG_PROBLEMS as error:
        if _is_explained_by_itself(error):
            raise
        raise ConfigError(f'{config}: {_reason(error)}') from error


def _reason(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return f'{type(error).__name__}: {text}'


def _chain(error: BaseException) -> List[BaseException]:
    seen: List[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _is_explained_by_itself(error: BaseException) -> bool:
    from mmdet_deformdetr.checkpoint import CheckpointError
    from mmdet_deformdetr.datasets import BadDataError

    return (
        isinstance(error, (CheckpointError, BadDataError, ConfigError))
        or _network_error(error) is not None
        or checkpoint_request(error)[0] is not None  # raised while a checkpoint was read
    )


def _network_error(error: BaseException) -> Optional[BaseException]:
    return next((e for e in _chain(error) if isinstance(e, _NETWORK_ERRORS)), None)


def _frames(error: BaseException) -> Iterator[Any]:
    """The frames of ``error``'s traceback, outermost first (its causes' after)."""
    for link in _chain(error):
        for frame, _ in traceback.walk_tb(link.__traceback__):
            yield frame


def checkpoint_request(error: BaseException) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """``(name, url, cache_file)`` of the checkpoint whose reading raised ``error``.

    ``name`` is what was asked for, as the config or the command line wrote it: the outermost
    ``mmengine.runner.checkpoint.load_checkpoint`` (or ``_load_checkpoint``) in the traceback,
    through which ``load_from``, ``init_cfg`` and the inferencers load. ``url`` and
    ``cache_file`` are torch.hub's download and the file it would have written (``open-mmlab://``
    names become a URL there). None where the traceback holds no such call.
    """
    name = url = cache_file = None
    for frame in _frames(error):
        module, function = frame.f_globals.get('__name__'), frame.f_code.co_name
        if (
            name is None
            and module == 'mmengine.runner.checkpoint'
            and function in ('load_checkpoint', '_load_checkpoint')
            and isinstance(frame.f_locals.get('filename'), str)
        ):
            name = frame.f_locals['filename']
        if module == 'torch.hub':
            url = frame.f_locals.get('url', url)
            cache_file = frame.f_locals.get('cached_file', cache_file)
    return name, url, cache_file


def settings_with_value(cfg: Any, value: str) -> List[str]:
    """Dotted paths of the config entries (``load_from``, ``model.backbone.init_cfg.checkpoint``
    ...) whose value is ``value``."""
    found: List[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                walk(item, f'{path}.{key}' if path else str(key))
        elif isinstance(node, (list, tuple)):
            for index, item in enumerate(node):
                walk(item, f'{path}.{index}')
        elif node == value:
            found.append(path)

    if cfg is not None:
        walk(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg, '')
    return found


def _without(cfg: Any, setting: str) -> Tuple[str, str]:
    """The ``--cfg-options`` entry that turns ``setting`` off, and what the run then lacks."""
    if setting == 'load_from':
        return 'load_from=None', 'the model then starts from its initialisation'
    parent, _, key = setting.rpartition('.')
    if key == 'checkpoint' and parent.split('.')[-1].startswith('init_cfg'):
        part = parent.split('.init_cfg')[0].split('.')[-1] or 'the model'
        return f'{parent}=None', f'the {part} then starts from random, not pretrained, weights'
    return f'{setting}=None', f'{setting} is then not used'


def _describe_request(
    error: BaseException, cfg: Any, checkpoint_argument: Optional[str]
) -> Optional[str]:
    """The message for a checkpoint that a setting asked for and that could not be read."""
    name, url, cache_file = checkpoint_request(error)
    network = _network_error(error)
    if name is None or (network is None and not isinstance(error, FileNotFoundError)):
        return None
    settings = settings_with_value(cfg, name) or (settings_with_value(cfg, url) if url else [])
    asked_by, options = None, None
    if checkpoint_argument is not None and name == checkpoint_argument:
        asked_by = 'the CHECKPOINT argument'
    elif settings:
        asked_by, options = settings[0], _without(cfg, settings[0])
    subject = f'{asked_by} = {name}' if asked_by else f'checkpoint {name}'
    if network is not None:
        reason = getattr(network, 'reason', None) or network
        lines = [f'{subject}: could not download {url or name} ({reason}).']
    else:
        lines = [f'{subject}: {error}.']
    if options is not None:
        lines.append(f'To run without it: --cfg-options {options[0]} ({options[1]}).')
    if network is not None:
        where = f' and put it at {cache_file} (torch.hub reads it from there first)' * bool(
            cache_file
        )
        if options is not None:
            local = f'set {settings[0]} to the local file'
        elif asked_by is not None and asked_by.startswith('the CHECKPOINT'):
            local = 'pass the local file as CHECKPOINT'
        else:
            local = 'use the local file instead'
        lines.append(f'Offline: download {url or name} where there is network{where}, or {local}.')
    return '\n'.join(lines)


def explain(
    error: BaseException, cfg: Any = None, checkpoint_argument: Optional[str] = None
) -> Optional[str]:
    """The message a tool prints for ``error``, or None when it is not one the tools explain.

    Args:
        error: the exception that ended the tool.
        cfg: the tool's config (mmengine ``Config``), to name the setting that asked for a
            checkpoint; None before it is loaded.
        checkpoint_argument: the checkpoint the command line named (``tools/test.py CONFIG
            CHECKPOINT``), which fills ``load_from`` but is not a setting to turn off.
    """
    from mmdet_deformdetr.checkpoint import CheckpointError
    from mmdet_deformdetr.datasets import BadDataError

    request = _describe_request(error, cfg, checkpoint_argument)
    if request is not None:
        return request
    if isinstance(error, CheckpointError):
        name, _, _ = checkpoint_request(error)
        settings = settings_with_value(cfg, name) if name else []
        prefix = f'{settings[0]} = {name}: ' if settings else ''
        return f'{prefix}{error}'
    if isinstance(error, (BadDataError, ConfigError)):
        return str(error)
    if isinstance(error, KeyError) and error.args and _REGISTRY_MISS.match(str(error.args[0])):
        return f'the config names an unknown type: {error.args[0]}'
    return None


def _log_traceback(error: BaseException) -> Optional[str]:
    """Write ``error``'s traceback to the current mmengine logger's log file (only there)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return None
    record = logger.makeRecord(
        logger.name,
        logging.ERROR,
        __file__,
        0,
        'the run ended with this error:',
        None,
        (type(error), error, error.__traceback__),
    )
    for handler in files:
        handler.handle(record)
    return files[0].baseFilename


class explained_errors(contextlib.AbstractContextManager):  # noqa: N801  (used as a `with` clause)
    """``with explained_errors('tools/train.py') as errors: ...``: an error that :func:`explain`
    explains ends the tool with ``tools/train.py: error: <message>`` (exit status 1), its traceback
    in the log file; unless verbose, when it is raised as it is. Set ``errors.cfg`` once the config
    is loaded (the message can then name the setting behind a checkpoint)."""

    def __init__(self, tool: str, checkpoint_argument: Optional[str] = None) -> None:
        self.tool = tool
        self.checkpoint_argument = checkpoint_argument
        self.cfg: Any = None

    def __exit__(self, exc_type, error, tb) -> bool:
        if not isinstance(error, Exception) or verbose():
            return False
        message = explain(error, self.cfg, self.checkpoint_argument)
        if message is None:
            return False
        log_file = _log_traceback(error)
        where = f'in {log_file}; ' if log_file else ''
        raise SystemExit(
            f'{self.tool}: error: {message}\n(the traceback: {where}--verbose prints it here)'
        ) from None
