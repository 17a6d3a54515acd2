//! QEMU's NVMe controller driven from userspace: admin queues in DMA
//! buffers, MSI-X vector 0, Identify Controller (run in the guest with
//! --include-ignored; QEMU started with `-device nvme,serial=barmap0001,...`).

mod common;

use std::time::Duration;

use barmap::{Device, IrqIndex};
use common::nvme;
use common::nvme_admin::Admin;

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_identify_controller_over_msix() {
    let dev = Device::open(nvme()).unwrap();
    let msix = dev.irq_info(IrqIndex::Msix).unwrap();
    assert!(msix.count >= 1, "QEMU's NVMe has MSI-X: {msix:?}");
    let admin = Admin::new(&dev);
    let vectors = dev.enable_msix(1).unwrap();
    admin.enable();

    let cid = 0x2a;
    admin.submit_identify(cid);
    let count = vectors.vector(0).unwrap().wait(Duration::from_secs(5)).unwrap();
    assert!(count >= 1);
    admin.check_identify(cid);
    admin.disable();
}
