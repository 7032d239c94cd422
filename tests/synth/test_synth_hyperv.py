"""Hyper-V root-partition guests (GuestSpec(hyperv=True)), read back with an independent page walker.

The non-Hyper-V output must not change: the content hashes below were recorded from the generator as it was
before the Hyper-V variant existed (commit e914e87 + d3f9968), so any drift in existing specs fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from wincrash.synth.guest import GuestSpec, generate
from wincrash.synth.writers import write_qemu_elf

CHUNK = 1 << 16
# (spec kwargs, content hash of the QEMU ELF, sha256 of the truth JSON) recorded before the hyperv variant.
BASELINE = [
    ({}, "dc86a2de43ed6a70fb5966250ca0609747f0a85106da7b868baf7b2a44d872f0",
     "72ef90da2ef0488663a03582e757b705942533ba33ac25ba3b1bd8ce43080d18"),
    ({"build": 17763, "cpus": 4, "ram_mib": 512, "seed": 3, "crashed": True},
     "5bd2827e07fe8e2bfecf8170bc692c904a08f798623a9d43c4616bfe37a0ea12",
     "3872359411d91de9ff21aee2945f8b4831e65ca4f4a88b7307d21abd97f84a47"),
    ({"build": 7601, "cpus": 1, "ram_mib": 256, "seed": 9},
     "f33eeaee952c72bbce33efc962423de92f747d93d783da1f05718679570c200e",
     "74e1036d894791bdc0636cb8b22fe5f4a87c31667a9f814fed7a520c132cdbcd"),
]


def content_hash(path: Path) -> str:
    """sha256 over (file size, every non-zero 64 KiB chunk with its offset): the same whatever the file
    system's hole granularity, and fast on sparse files (holes are skipped with SEEK_DATA)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(size.to_bytes(8, "little"))
    with path.open("rb") as fh:
        fd = fh.fileno()
        pos = 0
        while pos < size:
            try:
                data_start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            hole = os.lseek(fd, data_start, os.SEEK_HOLE)
            cur = data_start - data_start % CHUNK
            while cur < hole:
                chunk = os.pread(fd, CHUNK, cur)
                if chunk.strip(b"\0"):
                    h.update(cur.to_bytes(8, "little"))
                    h.update(chunk)
                cur += CHUNK
            pos = cur
    return h.hexdigest()


@pytest.mark.parametrize(("kwargs", "elf_hash", "truth_hash"), BASELINE)
def test_non_hyperv_output_unchanged(tmp_path, kwargs, elf_hash, truth_hash):
    guest = generate(GuestSpec(**kwargs))
    path = tmp_path / "g.elf"
    with path.open("wb") as fh:
        write_qemu_elf(fh, guest)
    assert content_hash(path) == elf_hash
    assert hashlib.sha256(json.dumps(guest.truth, sort_keys=True).encode()).hexdigest() == truth_hash
