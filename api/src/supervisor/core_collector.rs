//! `kdump.core_collector` of `POST /v1/vms`: which collector commands a client may have the
//! host run on its VM's crashes. Only `makedumpfile`, with options that choose how it filters,
//! compresses and reports — never ones that name other files (`--split`, `-g`, `-i`, `-x`,
//! `--config`), write to stdout (`-F`) or do something else (`-R`, `--reassemble`). The host
//! adds the input and output paths.

use crate::error::ApiError;

/// The only program a client may name.
const PROGRAM: &str = "makedumpfile";
/// Longest command accepted.
const MAX_COMMAND_LEN: usize = 256;
/// Options without a value.
const FLAGS: [&str; 7] = ["-c", "-l", "-z", "-E", "-D", "--non-mmap", "--non-cyclic"];
/// Options whose value (the next word) is a number.
const NUMERIC_OPTIONS: [&str; 4] = ["-d", "--message-level", "--num-threads", "--cyclic-buffer"];

/// Checks `command` and returns it with its words joined by single spaces, as the VMM splits it.
pub fn check_core_collector(command: &str) -> Result<String, ApiError> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let refuse = |why: String| {
        ApiError::invalid(format!(
            "kdump.core_collector {command:?}: {why}. It is \"{PROGRAM}\" and any of {}, or {} with a number \
             (e.g. \"makedumpfile -l -d 31\"); the host adds the input and output",
            FLAGS.join(" "),
            NUMERIC_OPTIONS.join(" ")
        ))
    };
    if command.len() > MAX_COMMAND_LEN {
        return Err(refuse(format!("longer than {MAX_COMMAND_LEN} bytes")));
    }
    let Some((&program, mut rest)) = words.split_first() else { return Err(refuse("it is empty".into())) };
    if program != PROGRAM {
        return Err(refuse(format!("{program:?} is not a collector the service runs")));
    }
    while let Some((&word, tail)) = rest.split_first() {
        rest = tail;
        if FLAGS.contains(&word) {
            continue;
        }
        if !NUMERIC_OPTIONS.contains(&word) {
            return Err(refuse(format!("{word:?} is not an option the service passes on")));
        }
        match rest.split_first() {
            Some((value, tail)) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => rest = tail,
            _ => return Err(refuse(format!("{word} needs a number after it"))),
        }
    }
    Ok(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makedumpfile_with_its_filtering_and_compression_options_only() {
        assert_eq!(check_core_collector(" makedumpfile  -l -d 31 ").unwrap(), "makedumpfile -l -d 31");
        assert_eq!(
            check_core_collector("makedumpfile -c --message-level 7 -d 17 --num-threads 2").unwrap(),
            "makedumpfile -c --message-level 7 -d 17 --num-threads 2"
        );
        for bad in [
            "",
            "rm -rf /",
            "/usr/sbin/makedumpfile -l",
            "makedumpfile -F -d 31",
            "makedumpfile --split",
            "makedumpfile -g /etc/passwd",
            "makedumpfile -d",
            "makedumpfile -d 3x",
            "makedumpfile -d31",
            "makedumpfile /tmp/other",
        ] {
            let e = check_core_collector(bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        assert!(check_core_collector(&format!("makedumpfile{}", " -l".repeat(100))).is_err());
    }
}
