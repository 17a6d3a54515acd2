//! The mapping layer: the address range a region lives in.
//!
//! Every open region gets one [`Mapping`]: an anonymous `PROT_NONE`
//! [`Reservation`] of the region's size (rounded up to pages), aligned so
//! that kernels from 6.12 on can back it with huge page-table entries. Each
//! mmapable area that the [`MapPolicy`] leaves untrapped is placed into it
//! with `MAP_FIXED | MAP_SHARED` from the region's file descriptor. The pages
//! in between stay `PROT_NONE`, and the mapping's registration with the fault
//! handler ([`crate::shadow`]) serves them.

mod layout;
mod mapping;
mod reservation;

pub use layout::MapPolicy;
pub(crate) use mapping::{Faults, MapSource, Mapping};
pub(crate) use reservation::page_size;
