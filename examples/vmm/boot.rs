//! Guest RAM and the Linux boot protocol: the bzImage, initramfs and command
//! line loaded with `linux-loader`, the zero page (boot parameters with an
//! E820 map), and the boot vCPU in 32-bit protected mode at the kernel's
//! `code32_start`, the entry of the 32-bit boot protocol.

use std::fs::File;
use std::path::Path;

use barmap::vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};

use crate::VmmError;

/// The zero page (`struct boot_params`).
const ZERO_PAGE: u64 = 0x7000;
/// The kernel command line.
const CMDLINE: u64 = 0x2_0000;
/// Room for the command line when the kernel's header names no limit.
const CMDLINE_MAX: usize = 0x1000;
/// Where conventional memory ends (the EBDA and the BIOS area follow) and
/// where high memory starts.
const LOW_RAM_END: u64 = 0x9_fc00;
const HIGH_RAM: u64 = 0x10_0000;
/// The highest guest RAM end: the 32-bit PCI window starts here.
pub const RAM_LIMIT: u64 = crate::pci::MMIO32_START;

/// `boot_params.hdr` fields of the boot protocol.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448;
const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags` bit: the kernel may use the heap after the setup code.
const CAN_USE_HEAP: u8 = 0x80;
const E820_RAM: u32 = 1;

/// The segments of the 32-bit boot protocol: `__BOOT_CS` and `__BOOT_DS`.
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const CR0_PE: u64 = 1;
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Local APIC registers and LVT delivery modes the boot vCPU is given (the
/// virtual wire that firmware sets up: PIC interrupts on LINT0, NMI on LINT1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7 << 8;
const APIC_MODE_NMI: u32 = 0x4 << 8;

/// Guest RAM from address 0, registered as KVM memory slot 0.
pub fn ram(vm: &VmFd, size: u64) -> Result<GuestMemoryMmap, VmmError> {
    if !(64 << 20..=RAM_LIMIT).contains(&size) {
        return Err(format!("guest RAM {size:#x} outside 64 MiB..{RAM_LIMIT:#x}").into());
    }
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])?;
    let slot = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: ram.get_host_address(GuestAddress(0))? as u64,
    };
    // SAFETY: `ram` is an anonymous mapping of `size` bytes that the caller
    // keeps until the VM is gone (both live to the end of `main`); the guest
    // reaches it only through KVM.
    unsafe { vm.set_user_memory_region(slot)? };
    Ok(ram)
}

/// Loads the kernel, initramfs and command line into `ram` and writes the
/// zero page; returns the kernel's 32-bit entry point.
pub fn load(
    ram: &GuestMemoryMmap,
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
) -> Result<GuestAddress, VmmError> {
    let mut image = File::open(kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    let loaded = BzImage::load(ram, None, &mut image, Some(GuestAddress(HIGH_RAM)))
        .map_err(|e| format!("{}: {e}", kernel.display()))?;
    let mut params = boot_params {
        hdr: loaded.setup_header.ok_or("a bzImage without a setup header")?,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDR_MAGIC;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;

    let max = match params.hdr.cmdline_size {
        0 => CMDLINE_MAX,
        n => n as usize + 1,
    };
    let cmdline = Cmdline::try_from(cmdline, max).map_err(|e| format!("command line: {e}"))?;
    load_cmdline(ram, GuestAddress(CMDLINE), &cmdline)?;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline.as_cstring()?.as_bytes().len() as u32;

    let ram_end = ram.last_addr().raw_value() + 1;
    let initrd = std::fs::read(initramfs).map_err(|e| format!("{}: {e}", initramfs.display()))?;
    // The initramfs goes at the top of what the kernel can reach, page aligned.
    let top = ram_end.min(u64::from(params.hdr.initrd_addr_max) + 1);
    let initrd_addr = top
        .checked_sub(initrd.len() as u64)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= loaded.kernel_end)
        .ok_or_else(|| format!("no room for the {}-byte initramfs", initrd.len()))?;
    ram.write_slice(&initrd, GuestAddress(initrd_addr))?;
    params.hdr.ramdisk_image = initrd_addr as u32;
    params.hdr.ramdisk_size = initrd.len() as u32;

    let e820 = [(0, LOW_RAM_END), (HIGH_RAM, ram_end - HIGH_RAM)];
    for (i, (addr, size)) in e820.into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        ram,
    )?;
    Ok(loaded.kernel_load)
}

/// Sets up the boot vCPU as the 32-bit boot protocol asks: protected mode
/// without paging, flat `__BOOT_CS`/`__BOOT_DS` segments, `esi` at the zero
/// page; with KVM's supported CPUID and the local APIC's virtual wire.
pub fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), VmmError> {
    let mut cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    for entry in cpuid.as_mut_slice() {
        if entry.function == 1 {
            // A guest of a hypervisor: Linux then finds KVM's leaves (kvmclock,
            // the TSC rate) instead of calibrating against the PIT.
            entry.ecx |= CPUID_1_ECX_HYPERVISOR;
            // The initial APIC ID: vCPU 0.
            entry.ebx &= 0x00ff_ffff;
        }
    }
    vcpu.set_cpuid2(&cpuid)?;

    let mut sregs = vcpu.get_sregs()?;
    for (seg, selector, type_) in [
        (&mut sregs.cs, BOOT_CS, 0xb),
        (&mut sregs.ds, BOOT_DS, 0x3),
        (&mut sregs.es, BOOT_DS, 0x3),
        (&mut sregs.fs, BOOT_DS, 0x3),
        (&mut sregs.gs, BOOT_DS, 0x3),
        (&mut sregs.ss, BOOT_DS, 0x3),
    ] {
        seg.base = 0;
        seg.limit = 0xffff_ffff;
        seg.selector = selector;
        seg.type_ = type_;
        seg.present = 1;
        seg.dpl = 0;
        seg.db = 1;
        seg.s = 1;
        seg.l = 0;
        seg.g = 1;
    }
    sregs.cr0 |= CR0_PE;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)?;

    let mut regs = vcpu.get_regs()?;
    regs.rip = entry.raw_value();
    regs.rsi = ZERO_PAGE;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;

    let mut lapic = vcpu.get_lapic()?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes = &mut lapic.regs[reg..reg + 4];
        let old = u32::from_le_bytes([bytes[0] as u8, bytes[1] as u8, bytes[2] as u8, bytes[3] as u8]);
        let new = (old & !0x0001_0700) | mode;
        for (b, v) in bytes.iter_mut().zip(new.to_le_bytes()) {
            *b = v as i8;
        }
    }
    vcpu.set_lapic(&lapic)?;
    Ok(())
}
