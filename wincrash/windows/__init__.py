"""Finding and describing Windows inside physical memory, without symbols.

locate.py runs the stages: kernel.py (DTB, ntoskrnl) -> kdbg.py (KDBG) -> facts.py (with version.py
and vcpus.py); pe.py and paging.py are the PE and page-table readers they share.
"""
