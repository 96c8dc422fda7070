//! UBSAN's checks and report lines (Linux's `lib/ubsan.c`): integer overflow of an addition
//! and an array index out of bounds. The kernel has no compiler-inserted sanitizer; the code
//! that needs a check calls these where the compiler would have put one, and the guest prints
//! the report (`UBSAN: <reason> in <file>:<line>:<column>`, then the detail line).
//!
//! ```
//! use crashvisor_klib::ubsan::{add_i32, Report, INT};
//!
//! assert_eq!(add_i32(2, 3), Ok(5));
//! let report = add_i32(i32::MAX - 1, 4).unwrap_err();
//! assert_eq!(report.reason(), "signed-integer-overflow");
//! assert_eq!(report.to_string(), "2147483646 + 4 cannot be represented in type 'int'");
//! let bounds = Report::out_of_bounds(8, "'char [8]'");
//! assert_eq!(bounds.to_string(), "index 8 is out of range for type 'char [8]'");
//! ```

use core::fmt;

/// A C type as UBSAN's type descriptor names it (quoted, as the compiler emits it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeDescriptor {
    /// The name, with its quotes: `'int'`.
    pub name: &'static str,
    /// Whether the type is signed.
    pub signed: bool,
}

/// `int`.
pub const INT: TypeDescriptor = TypeDescriptor { name: "'int'", signed: true };
/// `unsigned int`.
pub const UNSIGNED_INT: TypeDescriptor = TypeDescriptor { name: "'unsigned int'", signed: false };

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// `lhs op rhs` does not fit `ty` (Linux's `handle_overflow`).
    Overflow {
        /// Left operand.
        lhs: i64,
        /// Right operand.
        rhs: i64,
        /// `+`, `-` or `*`.
        op: char,
        /// The operands' type.
        ty: TypeDescriptor,
    },
    /// `index` is outside `array_type` (Linux's `__ubsan_handle_out_of_bounds`).
    OutOfBounds {
        /// The index.
        index: u64,
        /// The array's type, e.g. `'char [8]'`.
        array_type: &'static str,
    },
}

impl Report {
    /// An out-of-bounds report.
    pub const fn out_of_bounds(index: u64, array_type: &'static str) -> Self {
        Self::OutOfBounds { index, array_type }
    }

    /// The reason UBSAN names in its first line.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Overflow { ty, .. } if ty.signed => "signed-integer-overflow",
            Self::Overflow { .. } => "unsigned-integer-overflow",
            Self::OutOfBounds { .. } => "array-index-out-of-bounds",
        }
    }
}

/// The report's detail line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overflow { lhs, rhs, op, ty } => {
                write!(f, "{lhs} {op} {rhs} cannot be represented in type {}", ty.name)
            }
            Self::OutOfBounds { index, array_type } => {
                write!(f, "index {index} is out of range for type {array_type}")
            }
        }
    }
}

/// `lhs + rhs` in an `int`, or the overflow report.
pub fn add_i32(lhs: i32, rhs: i32) -> Result<i32, Report> {
    lhs.checked_add(rhs).ok_or(Report::Overflow { lhs: lhs.into(), rhs: rhs.into(), op: '+', ty: INT })
}

/// `lhs + rhs` in an `unsigned int`, or the overflow report (only with
/// `-fsanitize=unsigned-integer-overflow`: unsigned wrap-around is defined in C).
pub fn add_u32(lhs: u32, rhs: u32) -> Result<u32, Report> {
    lhs.checked_add(rhs).ok_or(Report::Overflow { lhs: lhs.into(), rhs: rhs.into(), op: '+', ty: UNSIGNED_INT })
}

/// Whether `index` is inside an array of `len` elements, or the report naming `array_type`.
pub fn check_index(index: usize, len: usize, array_type: &'static str) -> Result<(), Report> {
    if index < len {
        Ok(())
    } else {
        Err(Report::out_of_bounds(index as u64, array_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn lkdtm_overflow_signed_overflows_on_the_second_addition() {
        let value = i32::MAX - 2;
        let value = add_i32(value, 1).unwrap();
        let report = add_i32(value, 4).unwrap_err();
        assert_eq!(report.to_string(), "2147483646 + 4 cannot be represented in type 'int'");
        assert_eq!(
            add_i32(i32::MIN, -1).unwrap_err().to_string(),
            "-2147483648 + -1 cannot be represented in type 'int'"
        );
    }

    #[test]
    fn lkdtm_overflow_unsigned_fits() {
        let value = (i32::MAX - 2) as u32;
        assert_eq!(add_u32(add_u32(value, 1).unwrap(), 4), Ok(2_147_483_650));
        let report = add_u32(u32::MAX, 1).unwrap_err();
        assert_eq!(report.reason(), "unsigned-integer-overflow");
        assert_eq!(report.to_string(), "4294967295 + 1 cannot be represented in type 'unsigned int'");
    }

    #[test]
    fn bounds() {
        assert_eq!(check_index(7, 8, "'char [8]'"), Ok(()));
        let report = check_index(8, 8, "'char [8]'").unwrap_err();
        assert_eq!(report.reason(), "array-index-out-of-bounds");
        assert_eq!(report.to_string(), "index 8 is out of range for type 'char [8]'");
    }
}
