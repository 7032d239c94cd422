"""wincrash: Windows crash dumps out of QEMU/KVM virtual machines, offline and without symbols."""

__version__ = "0.1.0"
