"""wincrash's test kit, a distribution of its own (not in the wincrash wheel): the synthetic Windows guest
generator (``synth``) and the Windows-like test VM for real QEMU (``testguest``). Used by the tests, the
benchmarks and scripts/demo.sh."""
