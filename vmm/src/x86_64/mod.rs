//! x86_64 specifics: boot parameters, the MP table, CPUID, MSRs and the
//! boot vCPU's registers.

pub mod boot_params;
pub mod cpuid;
pub mod mptable;
pub mod msr;
pub mod regs;
