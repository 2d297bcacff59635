//! Ring 0, in assembly, kept as short as possible: on the PVM hosts we test
//! on, guest ring 0 is emulated instruction by instruction (~1000× slower),
//! while ring 3 runs natively.
//!
//! Boot CPU (PVH entry, 32-bit protected mode, EBX = start info):
//!   1. print the banner on COM1 (port I/O; the first byte is "ready");
//!   2. if the command line starts with `r0=reset` or `r0=triplefault`,
//!      do that here (port I/O and faults need ring 0) and stop;
//!   3. load our GDT and static page tables (4 GiB identity map, every page
//!      user-accessible), enable SSE, enter long mode;
//!   4. drop to ring 3 with IRETQ (portable: SYSEXIT is not valid in long
//!      mode on AMD) on this CPU's stack, calling `guest_main(start_info, 0)`
//!      with interrupts off.
//!
//! Application processors start in real mode at the trampoline, which the
//! boot CPU copies below 1 MiB before it sends INIT/SIPI; they go through
//! protected mode to the same long-mode path and enter
//! `guest_main(start_info, slot)` with a slot taken from a shared counter.

use core::arch::global_asm;

/// Most CPUs the guest drives (one 16 KiB stack each).
pub const MAX_CPUS: usize = 64;

extern "C" {
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
}

/// The real-mode AP trampoline's bytes (position-independent, one page max).
pub fn trampoline() -> &'static [u8] {
    // SAFETY: both symbols are labels in the same section of this image,
    // start before end, and the bytes between them are never written.
    unsafe {
        let start = &raw const ap_trampoline;
        let end = &raw const ap_trampoline_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

global_asm!(
    r#"
    .set STACK_SHIFT, 14
    .set MAX_CPUS, {max_cpus}
    .set COM1, 0x3f8

/* PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18) with the 32-bit entry point. */
.section .note.Xen, "a"
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_entry
    .p2align 2

.section .text.boot, "ax"
.code32
.global pvh_entry
pvh_entry:
    cli
    cld
    mov %ebx, %edi
    mov $banner, %esi
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:
    /* Ring-0 actions, chosen by the first token of the command line. */
    mov 0x18(%edi), %eax
    cmpw $0x3072, (%eax)          /* "r0" */
    jne 3f
    cmpb $'=', 2(%eax)
    jne 3f
    cmpb $'r', 3(%eax)
    je do_reset
    cmpb $'t', 3(%eax)
    je do_triple_fault
3:
    mov %edi, saved_start_info
    xor %ebp, %ebp                /* boot CPU */
    jmp enter_long_mode

do_reset:
    mov $0xfe, %al
    out %al, $0x64                /* i8042: pulse the CPU reset line */
4:  hlt
    jmp 4b

do_triple_fault:
    lidt null_idtr
    ud2

/* Shared by all CPUs: 32-bit protected mode to 64-bit ring 0. EBP = 0 on
 * the boot CPU, 1 on an AP. */
enter_long_mode:
    lgdt gdtr
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x620, %eax               /* PAE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx         /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0x9ffffffb, %eax         /* caches on (CD, NW clear after INIT); no EM */
    or $0x80000003, %eax          /* PG | MP | PE */
    mov %eax, %cr0
    ljmp $0x08, $long_mode

.code64
long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    xor %esi, %esi                /* slot 0 for the boot CPU */
    test %ebp, %ebp
    jz enter_user
    mov $1, %esi
    lock xadd %esi, next_slot(%rip)
    cmp $MAX_CPUS, %esi
    jae park
enter_user:
    mov saved_start_info(%rip), %rdi
    mov %rsi, %rax                /* top of this slot's stack */
    inc %rax
    shl $STACK_SHIFT, %rax
    mov $stacks, %rcx
    add %rcx, %rax
    mov %rax, %rsp                /* ring-0 stack for the IRET frame */
    sub $8, %rax                  /* ring-3 RSP, as if guest_main was called */
    pushq $0x33                   /* SS: user data, RPL 3 */
    pushq %rax                    /* RSP */
    pushq $0x2                    /* RFLAGS: IF = 0, IOPL = 0 */
    pushq $0x2b                   /* CS: user code, RPL 3 */
    mov $guest_main, %eax
    pushq %rax                    /* RIP */
    iretq
park:
    hlt
    jmp park

/* AP entry: real mode at (SIPI vector << 12), copied there by the BSP. */
.code16
.global ap_trampoline
ap_trampoline:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (ap_gdtr - ap_trampoline)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $ap_protected
    .p2align 2
ap_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
.global ap_trampoline_end
ap_trampoline_end:

.code32
ap_protected:
    mov $0x10, %ax                /* flat data before any absolute access */
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %ebp
    jmp enter_long_mode

.section .rodata
banner:
    .asciz "corral-test-guest: booting\n"

.section .data
    .p2align 4
gdt:
    .quad 0
    .quad 0x00af9a000000ffff      /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff      /* 0x10 kernel data */
    .quad 0x00cf9a000000ffff      /* 0x18 kernel code, 32-bit (APs) */
    .quad 0                       /* 0x20 unused */
    .quad 0x00affa000000ffff      /* 0x28 user code, 64-bit */
    .quad 0x00cff2000000ffff      /* 0x30 user data */
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .long gdt
null_idtr:
    .word 0
    .long 0
    .p2align 3
.global saved_start_info
saved_start_info:
    .quad 0
next_slot:
    .long 1

    .p2align 12
pml4:
    .quad pdpt + 7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0007
    .quad pd + 0x1007
    .quad pd + 0x2007
    .quad pd + 0x3007
    .fill 508, 8, 0
pd:                               /* 2048 x 2 MiB: present, writable, user */
    .set addr, 0
    .rept 2048
    .quad addr | 0x87
    .set addr, addr + 0x200000
    .endr

.section .bss
    .p2align 12
stacks:
    .skip MAX_CPUS << STACK_SHIFT
"#,
    max_cpus = const MAX_CPUS,
    options(att_syntax)
);
