"""Files for the checkpoint tests: a payload that runs a shell command when unpickled, and damaged
copies of real checkpoints (fixtures using them are in ``tests/checkpoint/conftest.py``)."""

import os
import random
import struct
import zipfile
from pathlib import Path
from typing import Tuple

CONVERTER = (
    Path(__file__).resolve().parents[2]
    / 'tools'
    / 'model_converters'
    / 'deformable_detr_to_mmdet_deformdetr.py'
)
#: ways to damage a checkpoint file (see :func:`damage_file`)
DAMAGES = ['empty', 'first_100_bytes', 'mid_tensor', 'last_byte_missing', 'random_bytes']


class ShellPayload:
    """Unpickling calls ``os.system('touch <marker>')`` (global ``posix.system`` on Linux)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


#: the name a file pickling ShellPayload refers to
SHELL_GLOBAL = f'{os.system.__module__}.system'


def _largest_member_data(path: Path) -> Tuple[int, int]:
    """(offset, size) of the largest stored tensor's bytes inside a torch.save zip file."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, 'rb') as stream:
        stream.seek(info.header_offset)
        header = stream.read(30)
    name_length, extra_length = struct.unpack('<HH', header[26:30])
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def damage_file(source: Path, damage: str, target: Path) -> Path:
    """Write a damaged copy of ``source`` (one of :data:`DAMAGES`) to ``target``."""
    data = source.read_bytes()
    if damage == 'empty':
        damaged = b''
    elif damage == 'first_100_bytes':
        damaged = data[:100]
    elif damage == 'mid_tensor':
        offset, size = _largest_member_data(source)
        damaged = data[: offset + size // 2]
    elif damage == 'last_byte_missing':
        damaged = data[:-1]
    elif damage == 'random_bytes':
        damaged = random.Random(0).randbytes(5000)
    else:
        raise ValueError(damage)
    target.write_bytes(damaged)
    return target
