//! Device drivers, on top of `arch::pci` (enumeration, BARs, MSI) and the interrupt framework
//! (`crate::intr::INTR`).

pub mod com;
pub mod edu;
pub mod error;

pub use error::DriverError;
pub mod virtio;
