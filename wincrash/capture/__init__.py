"""Live VMs: resolve the VM argument, talk QMP (or libvirt), inject NMIs, take memory dumps."""
