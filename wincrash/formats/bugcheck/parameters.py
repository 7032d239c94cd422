"""What the four parameters of the common bug checks mean, in wincrash's own words.

Source of the facts: Microsoft's per-code pages of the public "Bug check code reference"
(learn.microsoft.com) and WinDbg's `!analyze -show CODE`. Where a parameter's meaning depends on
parameter 1 (a sub-code), the text says so; SUBCODES spells out parameter 1 for the codes whose
sub-codes are few and stable. Data only; wincrash.formats.bugcheck looks entries up.
"""

from __future__ import annotations

_DEPENDS = "depends on parameter 1"

PARAMETERS: dict[int, tuple[str, str, str, str]] = {
    0x0A: ("memory address referenced", "IRQL at the time of the reference",
           "access: bit 0 clear = read, set = write; bit 3 set = execute", "address of the faulting instruction"),
    0x19: ("kind of pool header corruption", _DEPENDS, _DEPENDS, _DEPENDS),
    0x1A: ("kind of memory-management failure", _DEPENDS, _DEPENDS, _DEPENDS),
    0x1E: ("exception code that was not handled", "address where the exception happened",
           "exception information parameter 0", "exception information parameter 1"),
    0x3B: ("exception code", "address of the faulting instruction", "address of the exception's CONTEXT record",
           "not used (0)"),
    0x50: ("memory address referenced", "kind of access (read, write or execute)",
           "address of the instruction that referenced the memory, if known", "kind of page fault (reserved before "
           "Windows 10)"),
    0x7B: ("address of the boot device's UNICODE_STRING or device object", "reserved", "reserved", "reserved"),
    0x7E: ("exception code that was not handled", "address where the exception happened",
           "address of the EXCEPTION_RECORD", "address of the CONTEXT record"),
    0x7F: ("processor trap number (0x8 = double fault, 0x0 = divide error, ...)", "reserved (trap-specific)",
           "reserved (trap-specific)", "reserved (trap-specific)"),
    0x80: ("hardware-specific", "hardware-specific", "hardware-specific", "hardware-specific"),
    0x9F: ("kind of power-IRP failure (0x3 = a device object blocked an IRP too long)",
           "physical device object (PDO) of the stack", _DEPENDS + " (for 0x3: nt!TRIAGE_9F_POWER block)",
           _DEPENDS + " (for 0x3: the blocked IRP)"),
    0xA0: ("kind of power-management error", _DEPENDS, _DEPENDS, _DEPENDS),
    0xBE: ("virtual address of the attempted write", "contents of the PTE", "reserved", "reserved"),
    0xC2: ("kind of bad pool request", _DEPENDS, _DEPENDS, _DEPENDS),
    0xC4: ("Driver Verifier rule that was violated", _DEPENDS, _DEPENDS, _DEPENDS),
    0xC5: ("memory address referenced", "IRQL at the time of the reference", "access: 0 = read, 1 = write",
           "address of the faulting instruction"),
    0xD1: ("memory address referenced", "IRQL at the time of the reference",
           "access: 0 = read, 1 = write, 2 or 8 = execute", "address of the faulting instruction"),
    0xEA: ("thread object stuck in the driver", "DEFERRED_WATCHDOG object", "pointer to the driver's name",
           "how many times the watchdog caught the condition"),
    0xEF: ("process object that died", "0 = the process ended, 1 = one of its threads ended", "reserved",
           "reserved"),
    0xF4: ("type of the terminated object (3 = process, 6 = thread)", "the terminated object",
           "the process's image file name", "address of a message explaining the termination"),
    0xFC: ("virtual address of the attempted execution", "contents of the PTE", "reserved", "reserved"),
    0x101: ("clock interrupt time-out interval, in nominal clock ticks", "0",
            "address of the unresponsive processor's PRCB", "0"),
    0x116: ("TDR recovery context", "address in the responsible display driver",
            "NTSTATUS of the last failed operation", "internal, context-dependent"),
    0x119: ("kind of video scheduler error", _DEPENDS, _DEPENDS, _DEPENDS),
    0x124: ("WHEA error source type (0 = machine check)", "address of the WHEA_ERROR_RECORD",
            "high 32 bits of MCi_STATUS (machine checks)", "low 32 bits of MCi_STATUS (machine checks)"),
    0x133: ("0 = one DPC or ISR ran too long, 1 = too long at DISPATCH_LEVEL or above in total",
            "for 0: the DPC's time count in ticks; for 1: the watchdog period in ticks",
            "for 0: the DPC time allotment in ticks; for 1: address of nt!DPC_WATCHDOG_GLOBAL_TRIAGE_BLOCK",
            "reserved"),
    0x139: ("kind of corruption detected (see the sub-codes)", "address of the KTRAP_FRAME",
            "address of the EXCEPTION_RECORD", "reserved"),
    0x13A: ("kind of heap corruption", "address of the heap", "address of the corrupted block, if known",
            "reserved"),
    0x144: ("kind of USB 3 failure", _DEPENDS, _DEPENDS, _DEPENDS),
    0x154: ("pointer to the store context or data manager", "exception information", "reserved", "reserved"),
    0x15F: ("phase of the connected-standby transition that timed out", _DEPENDS, _DEPENDS, _DEPENDS),
    0x1C8: ("reserved", "reserved", "reserved", "reserved"),
}

SUBCODES: dict[int, dict[int, str]] = {
    0x133: {0: "a single DPC or ISR exceeded its time allotment",
            1: "the processor stayed at DISPATCH_LEVEL or above for too long in total"},
    0x139: {0: "stack buffer overrun (legacy /GS check)",
            1: "VTGuard found an illegal virtual function table",
            2: "stack buffer overrun (/GS check)",
            3: "a LIST_ENTRY is corrupted (a double remove or a bad link)",
            5: "an invalid parameter was passed to a function that treats it as fatal",
            6: "the stack security cookie was not initialised by the loader",
            7: "a fatal program exit was requested",
            8: "a compiler-inserted array bounds check failed",
            10: "Control Flow Guard found an invalid indirect call target",
            11: "a write guard check found an invalid memory write",
            12: "switch to an invalid fiber context",
            13: "an invalid register context was assigned",
            14: "an object's reference count is invalid"},
    0x9F: {0x1: "a device object is being freed while it still has an outstanding power request",
           0x3: "a device object blocked a power IRP for too long",
           0x4: "the power state transition timed out waiting to synchronise with the PnP subsystem"},
    0xEF: {0: "a critical process ended", 1: "a thread of a critical process ended"},
}
