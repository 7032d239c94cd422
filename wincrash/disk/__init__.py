"""Offline disk images of Windows guests: read crash dumps out of them, prepare them to write dumps.

Everything goes through libguestfs (a small appliance VM reads the guest's filesystems), so any
format QEMU reads works (qcow2 with backing chains, raw, vmdk, vhdx) and the host kernel never
mounts untrusted NTFS. Modules: image (probe, locks), guestfs_backend (open), locate (what to
fetch), download (streamed copies), pagefile (cut the dump out), crashcontrol (`prepare`),
grab (the `grab-pagefile` command), render (their text output). Nothing here prints
except progress bars (stderr, on a terminal): each command returns a frozen result.
"""
