//! Linux's CPU list format (`0-3,5`), as `watchdog_cpumask` reads and writes it.

use crate::bytefmt::ByteWriter;

/// Parses a CPU list (`""` is the empty set) into a bit mask of CPUs below `nr_cpus`.
/// `None` if malformed or naming a CPU ≥ `nr_cpus` (Linux's `cpulist_parse` fails likewise).
pub fn parse(list: &str, nr_cpus: usize) -> Option<u64> {
    let nr_cpus = nr_cpus.min(64);
    let mut mask = 0u64;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (start, end) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?),
            None => {
                let cpu = part.trim().parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if start > end || end >= nr_cpus {
            return None;
        }
        for cpu in start..=end {
            mask |= 1 << cpu;
        }
    }
    Some(mask)
}

/// Writes `mask` (limited to `nr_cpus`) as a CPU list, e.g. `0-3,5`.
pub fn format(mask: u64, nr_cpus: usize, out: &mut [u8]) -> &[u8] {
    let nr_cpus = nr_cpus.min(64);
    let mut w = ByteWriter::new(out);
    let mut cpu = 0;
    let mut first = true;
    while cpu < nr_cpus {
        if mask & (1 << cpu) == 0 {
            cpu += 1;
            continue;
        }
        let start = cpu;
        while cpu + 1 < nr_cpus && mask & (1 << (cpu + 1)) != 0 {
            cpu += 1;
        }
        if !first {
            w.push_byte(b',');
        }
        first = false;
        w.push_dec(start as u64);
        if cpu > start {
            w.push_byte(b'-').push_dec(cpu as u64);
        }
        cpu += 1;
    }
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_linux_cpu_lists() {
        assert_eq!(parse("0-3", 4), Some(0b1111));
        assert_eq!(parse("0,2-3", 4), Some(0b1101));
        assert_eq!(parse("", 4), Some(0));
        assert_eq!(parse("1\n", 2), Some(0b10));
        assert_eq!(parse("4", 4), None);
        assert_eq!(parse("3-1", 4), None);
        assert_eq!(parse("a", 4), None);
        assert_eq!(parse("0-", 4), None);
    }

    #[test]
    fn formats_runs() {
        let mut buf = [0u8; 64];
        assert_eq!(format(0b1111, 4, &mut buf), b"0-3");
        assert_eq!(format(0b1101, 4, &mut buf), b"0,2-3");
        assert_eq!(format(0, 4, &mut buf), b"");
        assert_eq!(format(u64::MAX, 2, &mut buf), b"0-1");
        assert_eq!(format(0b101010, 6, &mut buf), b"1,3,5");
    }

    #[test]
    fn round_trips() {
        let mut buf = [0u8; 256];
        for mask in [0u64, 1, 0b1011_0110, 0xffff, 0x8001] {
            let text = alloc::string::String::from_utf8(format(mask, 16, &mut buf).to_vec()).unwrap();
            assert_eq!(parse(&text, 16), Some(mask & 0xffff));
        }
    }
}
