//! A userspace NVMe driver on barmap's public API: the controller's
//! registers ([`regs`]), commands and completions ([`command`]), Identify
//! data ([`identify`]), queue pairs in DMA memory ([`queue`]), the controller
//! ([`controller`]) and its errors ([`error`]).

pub mod command;
pub mod controller;
pub mod error;
pub mod identify;
pub mod queue;
pub mod regs;

pub use controller::{Controller, Mode, Options};
pub use error::NvmeError;
pub use queue::Data;
