"""Command-line tools (run as scripts: ``python tools/train.py ...``). A regular package so that
``tools.tool_common``, their shared module, cannot be shadowed by another top-level ``tools``."""
