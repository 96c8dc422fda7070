//! Where a fleet keeps its crashes: `s3://BUCKET/PREFIX` and the host id that names this host's
//! part of it (`PREFIX/HOST/`).

use std::fmt;
use std::str::FromStr;

/// Longest host id.
pub const MAX_HOST_ID_LEN: usize = 64;

/// `s3://BUCKET/PREFIX`: the bucket and the key prefix (no leading or trailing `/`; may be
/// empty) the fleet's crashes live under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The bucket.
    pub bucket: String,
    /// The key prefix.
    pub prefix: String,
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = "give the crash store as s3://BUCKET/PREFIX (the endpoint, region and credentials come \
                     from the AWS_* environment variables, as for the AWS tools)";
        let Some(rest) = text.strip_prefix("s3://") else {
            return Err(format!("{text:?} is not an s3:// URL: {usage}"));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(format!(
                "{bucket:?} is not a bucket name (3 to 63 characters of a-z 0-9 . -, starting and ending with a \
                 letter or digit): {usage}"
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        let segments_ok = prefix.is_empty()
            || prefix.split('/').all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']));
        if !segments_ok {
            return Err(format!("{prefix:?} is not a key prefix (empty segments, . and .. are not allowed): {usage}"));
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Checks a host id: 1 to 64 characters of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn validate_host_id(id: &str) -> Result<(), String> {
    if dumpd::store::is_plain_name(id, MAX_HOST_ID_LEN) {
        Ok(())
    } else {
        Err(format!(
            "invalid host id {id:?}: use 1 to {MAX_HOST_ID_LEN} characters from A-Z a-z 0-9 _ . - not starting with a dot"
        ))
    }
}

/// This host's name (`gethostname`), the default host id.
pub fn default_host_id() -> Result<String, String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(format!("cannot read the host name ({}); give --host-id", std::io::Error::last_os_error()));
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    validate_host_id(&name).map_err(|e| format!("the host name cannot be the host id ({e}); give --host-id"))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        let url: StoreUrl = "s3://crashes/fleet/a/".parse().unwrap();
        assert_eq!((url.bucket.as_str(), url.prefix.as_str()), ("crashes", "fleet/a"));
        assert_eq!(url.to_string(), "s3://crashes/fleet/a");
        let bare: StoreUrl = "s3://crashes".parse().unwrap();
        assert_eq!((bare.prefix.as_str(), bare.to_string().as_str()), ("", "s3://crashes"));
        for bad in ["crashes", "http://x/y", "s3://", "s3://Up", "s3://a", "s3://b/../x", "s3://b/a//c", "s3://-b"] {
            let e = bad.parse::<StoreUrl>().unwrap_err();
            assert!(e.contains("s3://BUCKET/PREFIX"), "{bad}: {e}");
        }
    }

    #[test]
    fn host_ids_are_checked() {
        for good in ["host-1", "a.b_c", &"h".repeat(64)] {
            assert!(validate_host_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".h", "a/b", "a@b", "a b", &"h".repeat(65)] {
            assert!(validate_host_id(bad).is_err(), "{bad:?}");
        }
        // This machine's name is a valid id, or the error says to give one.
        match default_host_id() {
            Ok(id) => assert!(validate_host_id(&id).is_ok()),
            Err(e) => assert!(e.contains("--host-id"), "{e}"),
        }
    }
}
