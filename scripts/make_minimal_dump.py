#!/usr/bin/env python3
"""Write samples/minimal-full.dmp: a tiny, sound full dump made by wincrash's own header writer.

It exists so that README's main-job command has a shipped input on a fresh machine; it holds no
real Windows memory (16 zero pages).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parsers.context import CONTEXT_AMD64_STRUCT, CONTEXT_FULL  # noqa: E402
from parsers.dump import DUMP_HEADER64_SIZE, PAGE_SIZE  # noqa: E402
from wincrash.dump.header import HeaderFields, build_header64  # noqa: E402


def main() -> None:
    ctx = CONTEXT_AMD64_STRUCT.parse(bytes(0x4D0))
    ctx.ContextFlags, ctx.SegCs, ctx.SegSs, ctx.Rip = CONTEXT_FULL, 0x10, 0x18, 0xFFFFF80000001000
    ctx.MxCsr = ctx.FltSave.MxCsr = 0x1F80
    runs = [(1, 8), (0x10, 8)]
    header = build_header64(HeaderFields(
        build=19041, directory_table_base=0x1AD000, pfn_database=0xFFFFF80000200000,
        ps_loaded_module_list=0xFFFFF80000210000, ps_active_process_head=0xFFFFF80000220000,
        kd_debugger_data_block=0xFFFFF80000230000, number_processors=1, bugcheck_code=0x161,
        bugcheck_parameters=(0, 0, 0, 0), runs=runs, context=CONTEXT_AMD64_STRUCT.build(ctx),
        required_dump_space=DUMP_HEADER64_SIZE + 16 * PAGE_SIZE, system_time=133000000000000000,
        comment="wincrash minimal sample"))
    out = Path(__file__).resolve().parent.parent / "samples" / "minimal-full.dmp"
    out.write_bytes(header + bytes(16 * PAGE_SIZE))
    print(out)


if __name__ == "__main__":
    main()
