//! Typed, checked access to an open region: the [`Region`] handle, the
//! scalar types an access can have, and the one place where device memory is
//! touched with volatile loads and stores.
//!
//! What every typed access does when the device refuses it is stated once,
//! on [`Region`] (its "Refused accesses" section).

mod builder;
mod bulk;
mod region;
mod scalar;
mod slow;
mod typed;
mod window;

pub use builder::RegionBuilder;
pub use region::Region;
pub use scalar::{read, write, Scalar};
