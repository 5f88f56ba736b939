//! The drivers' error type: what went wrong, naming the device and, where there is one, its
//! PCI function.

use alloc::string::String;
use core::fmt;

use arch::pci::Bdf;

/// Why a driver could not bring its device up or change its interrupt set-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// No PCI function with the vendor id and one of the device ids: the device is not
    /// attached (the host tool adds it for the main job and the `dev::` tests).
    NotFound {
        /// The driver's name for the device (`virtio-blk0`).
        device: &'static str,
        /// PCI vendor id.
        vendor: u16,
        /// The device ids the driver accepts.
        ids: &'static [u16],
    },
    /// The function is there but lacks or refuses something.
    Device {
        /// The driver's name for the device.
        device: &'static str,
        /// Where it is.
        bdf: Bdf,
        /// What is missing or refused.
        what: &'static str,
    },
    /// The interrupt framework refused the device's source.
    Establish {
        /// The driver's name for the device.
        device: &'static str,
        /// Why.
        error: intr::EstablishError,
    },
    /// A legacy (ISA) IRQ could not be routed to an IOAPIC input.
    Route {
        /// The driver's name for the device.
        device: &'static str,
        /// The ISA IRQ.
        irq: u8,
        /// Why (the IOAPIC's answer).
        why: String,
    },
    /// A soft interrupt was asked for at a level that is not a soft level.
    NotSoftLevel {
        /// The driver's name for the device.
        device: &'static str,
        /// The level asked for.
        ipl: ipl::Ipl,
    },
    /// A UART the driver needs is not there.
    NoUart {
        /// The driver's name for the device.
        device: &'static str,
        /// Its I/O port base.
        port: u16,
    },
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::NotFound { device, vendor, ids } => {
                write!(f, "{device}: no such PCI function (vendor {vendor:#06x}, device")?;
                for (i, id) in ids.iter().enumerate() {
                    write!(f, "{} {id:#06x}", if i == 0 { "" } else { " or" })?;
                }
                write!(f, ")")
            }
            DriverError::Device { device, bdf, what } => write!(f, "{device} at {bdf}: {what}"),
            DriverError::Establish { device, error } => write!(f, "{device}: {error}"),
            DriverError::Route { device, irq, why } => write!(f, "{device}: ISA IRQ {irq}: {why}"),
            DriverError::NotSoftLevel { device, ipl } => {
                write!(f, "{device}: {ipl} is not a soft interrupt level")
            }
            DriverError::NoUart { device, port } => {
                write!(f, "{device}: no UART at {port:#x} (QEMU needs one more -serial)")
            }
        }
    }
}

/// Tests and shell commands report errors as text.
impl From<DriverError> for String {
    fn from(e: DriverError) -> String {
        alloc::format!("{e}")
    }
}
