//! The guest↔host contract of crashvisor.
//!
//! Both the guest kernel (`no_std`, `x86_64-unknown-none`) and the host crates compile against
//! this crate, so every port number, register layout, boot structure and control-channel message
//! exists exactly once.
//! It holds no code that needs `unsafe` and no allocation.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

/// Defines an enum of names (protocol words, LKDTM's names) with `ALL`, `as_str`, `from_name`
/// and `Display` (the host's control socket defines its own names with it too).
#[macro_export]
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// Its name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            /// The value with this name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($text => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod control;
pub mod dump;
pub mod layout;
pub mod lkdtm;
pub mod params;
pub mod platform;
pub mod pvh;
pub mod serial;
