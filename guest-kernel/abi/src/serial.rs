//! The 16550 UARTs.

/// COM1 base I/O port: the human console and shell.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 interrupt line (ISA IRQ 4, routed through the I/O APIC).
pub const COM1_IRQ: u32 = 4;
/// Number of I/O ports a 16550 decodes.
pub const UART_PORT_COUNT: u16 = 8;
