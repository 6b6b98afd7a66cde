"""Helpers shared by the test folders, imported as ``from tests.helpers.<module> import ...``
(``pythonpath = ["."]`` in pyproject.toml puts the repository root on sys.path).

- :mod:`.models`: tiny DeformDETR configs and batches, the R-50 models of the shipped configs, and
  mmdet's own ``DeformableDETR`` config equivalent to one of ours.
- :mod:`.checkpoints`: official-layout state dicts and files from the key/shape listing.
- :mod:`.tools`: running ``tools/*.py`` / ``tools/*.sh`` as a user would.
- :mod:`.broken_coco`: small COCO datasets with chosen defects (bad-data tests).
- :mod:`.tiers`: the fast tier (``--fast``) and its budget, as pytest hooks.

Fixtures (mmdet's scope, one torch thread, the data under ``tests/data``) are in
``tests/conftest.py``.
"""
