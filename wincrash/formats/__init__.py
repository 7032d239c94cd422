"""construct definitions of the binary formats wincrash reads and writes.

Pure data: no I/O, no policy. Every structure's size and field offsets are asserted in
tests/parsers, against ../shared/DESIGN.md and real files.
"""
