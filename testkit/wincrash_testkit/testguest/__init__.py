"""A Windows-like test guest for real QEMU (TCG): our own firmware, a synthetic kernel address space.

Used by the capture tests and the capture benchmark; also a way to try `wincrash nmi/dump/capture`
on a machine without Windows. See vm.TestGuest.
"""
