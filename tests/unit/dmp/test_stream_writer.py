"""The streaming DMP writer offline: a generated guest's QEMU ELF fed as a stream (odd chunk sizes, as a
pipe delivers them), Windows found first through a fetch callable (as capture does through the monitor),
and the result compared byte for byte with `convert` of the same ELF."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf

from wincrash.convert.pipeline import convert_file
from wincrash.dmp.plan import plan_dump
from wincrash.dmp.stream_writer import STREAM_FORMATS, DmpStreamSink, finish_kernel, finish_stream, stream_layout
from wincrash.memory.fetched_source import FetchedSource
from wincrash.memory.source import open_source
from wincrash.output import atomic_output
from wincrash.windows.locate import locate_windows


def _elf(tmp: Path, **spec: object) -> Path:
    path = tmp / "g.elf"
    with open(path, "wb") as fh:
        write_qemu_elf(fh, generate(GuestSpec(ram_mib=256, **spec)))  # type: ignore[arg-type]
    return path


def _stream(elf: Path, out: Path, fmt: str, seed: int, cpus_from_notes: bool = True) -> tuple[int, bool]:
    """Find the runs through a fetch callable, stream the ELF's bytes into ``out``; (fetches, rewritten)."""
    source = open_source(elf)
    with source.fh:
        ram = [(s.paddr, s.size) for s in source.segments]
        pre = FetchedSource(source.read, ram, source.cpus if cpus_from_notes else [])
        with pre.fh:
            runs = plan_dump(locate_windows(pre), pre).header.runs
        layout = stream_layout(runs, fmt)
    rng = random.Random(seed)
    with atomic_output(out) as fh, open(elf, "rb") as src, tempfile.TemporaryFile(dir=out.parent) as staging:
        sink = DmpStreamSink(staging if fmt == "kernel" else fh, layout)
        while data := src.read(rng.choice((1, 77, 4096, 65536, 1 << 20))):
            sink.write(data)
        if fmt == "kernel":
            return pre.fetches, finish_kernel(sink, out, fh, lambda _n: None).rewritten

        def rewrite(s, plan):  # noqa: ANN001, ANN202
            raise AssertionError("the runs were known before the stream")
        done = finish_stream(sink, out, fmt, rewrite, lambda _n: None)
    return pre.fetches, done.rewritten


@pytest.mark.parametrize("fmt", STREAM_FORMATS)
def test_streamed_dmp_equals_convert(tmp_path: Path, fmt: str) -> None:
    elf = _elf(tmp_path, build=19041, cpus=2, seed=5, crashed=True)
    fetches, rewritten = _stream(elf, tmp_path / "s.dmp", fmt, seed=1)
    converted = convert_file(elf, tmp_path / "c.dmp", fmt=fmt, progress=False)
    if fmt == "kernel":  # the page set was cut: fewer pages than the runs hold, none of them lost
        assert 0 < converted.pages_written < converted.pages_in_runs
    assert not rewritten and 0 < fetches < 400
    assert (tmp_path / "s.dmp").read_bytes() == (tmp_path / "c.dmp").read_bytes()
    assert os.stat(tmp_path / "s.dmp").st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.dmp", "g.elf", "s.dmp"]
