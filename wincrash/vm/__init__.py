"""Live VMs: reach one QEMU, over its QMP socket or through libvirt, and ask it things.

The one layer below ``capture`` (nmi, dump, capture) and ``doctor``. ``target`` resolves the VM
argument; ``opener.open_vm`` is the only place that knows both transports and returns a
``connection.VmConnection``; ``errors`` holds the typed failures (all ``VmError``, which the CLI
prints as one line); ``runstate`` names QEMU's run states. This package imports nothing above it.
"""
