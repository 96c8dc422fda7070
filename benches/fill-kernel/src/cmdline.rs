//! The kernel command line: `fill=half|full` (default `half`) and `seed=N` (decimal or `0x`
//! hex, default `DEFAULT_SEED`). Other words are ignored.

use core::fmt;

use crate::fill::Mode;

/// The seed when the command line names none.
pub const DEFAULT_SEED: u64 = 0;

/// What the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How much of RAM to fill.
    pub mode: Mode,
    /// The noise's seed.
    pub seed: u64,
}

/// A command line this kernel cannot follow.
#[derive(Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// Not UTF-8.
    NotUtf8,
    /// `fill=` names no mode.
    Mode(&'a str),
    /// `seed=` is not a 64-bit number.
    Seed(&'a str),
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotUtf8 => f.write_str("the command line is not UTF-8"),
            Self::Mode(word) => write!(f, "unknown fill mode `{word}` (half or full)"),
            Self::Seed(word) => write!(f, "bad seed `{word}` (a decimal or 0x-hex 64-bit number)"),
        }
    }
}

/// Reads the fill mode and the seed from the command line.
pub fn parse(cmdline: &[u8]) -> Result<Config, CmdlineError<'_>> {
    let cmdline = core::str::from_utf8(cmdline).map_err(|_| CmdlineError::NotUtf8)?;
    let mut config = Config { mode: Mode::Half, seed: DEFAULT_SEED };
    for word in cmdline.split_ascii_whitespace() {
        if let Some(mode) = word.strip_prefix("fill=") {
            config.mode = match mode {
                "half" => Mode::Half,
                "full" => Mode::Full,
                _ => return Err(CmdlineError::Mode(mode)),
            };
        } else if let Some(seed) = word.strip_prefix("seed=") {
            let parsed = match seed.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => seed.parse(),
            };
            config.seed = parsed.map_err(|_| CmdlineError::Seed(seed))?;
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        assert_eq!(parse(b""), Ok(Config { mode: Mode::Half, seed: DEFAULT_SEED }));
    }

    #[test]
    fn mode_and_seed() {
        assert_eq!(parse(b"console=ttyS0 fill=full seed=42"), Ok(Config { mode: Mode::Full, seed: 42 }));
        assert_eq!(parse(b"seed=0xff fill=half"), Ok(Config { mode: Mode::Half, seed: 0xff }));
    }

    #[test]
    fn errors() {
        assert_eq!(parse(b"fill=most"), Err(CmdlineError::Mode("most")));
        assert_eq!(parse(b"seed=-1"), Err(CmdlineError::Seed("-1")));
        assert_eq!(parse(b"\xff"), Err(CmdlineError::NotUtf8));
    }
}
