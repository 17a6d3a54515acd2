//! Direct mapping of BAR areas into the process.
//!
//! Every region that is mapped at all gets one [`Reservation`]: an anonymous
//! `PROT_NONE` range of the region's size (rounded up to pages), aligned so
//! that kernels from 6.12 on can back it with huge page-table entries. Each
//! mmapable area of the region is then placed into it with `MAP_FIXED |
//! MAP_SHARED` from the VFIO device file descriptor. The parts in between stay
//! `PROT_NONE`: the shadow region machinery serves them.

mod reservation;

pub(crate) use reservation::{page_size, Reservation};
