//! x86_64 specifics: boot parameters, the MP table, the ACPI tables, CPUID,
//! MSRs and the boot vCPU's registers.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod mptable;
pub mod msr;
pub mod regs;
