//! The 16550 UARTs.

/// COM1 base I/O port: the human console and shell.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 interrupt line (ISA IRQ 4, routed through the I/O APIC).
pub const COM1_IRQ: u32 = 4;
/// COM2 base I/O port: the machine control channel (see `crate::control`).
pub const COM2_PORT: u16 = 0x2f8;
/// COM2 interrupt line (ISA IRQ 3, routed through the I/O APIC).
pub const COM2_IRQ: u32 = 3;
/// Number of I/O ports a 16550 decodes.
pub const UART_PORT_COUNT: u16 = 8;
