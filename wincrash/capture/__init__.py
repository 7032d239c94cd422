"""The live-VM commands: `nmi` (nmi.py), `dump` (guest_memory_dump.py) and `capture` (crash_capture.py).

They talk to the VM only through ``wincrash.vm`` (open_vm, VmConnection) and print through render.py.
"""
