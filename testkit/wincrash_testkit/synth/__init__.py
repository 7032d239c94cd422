"""Synthetic but faithful Windows x64 guests in QEMU dump format: seeded test data for `wincrash convert`."""
