//! The slab allocator's debug options (Linux's `slab_debug=`, formerly `slub_debug=`): which
//! caches get which checks, where an object's red zone and free pointer go, and the byte
//! patterns of poisoned and red-zoned memory with the check that finds a broken one.
//!
//! ```
//! use crashvisor_klib::slab_debug::{DebugFlags, ObjectLayout};
//!
//! let flags = DebugFlags::for_cache(Some(Some("ZP,kmalloc-*")), "kmalloc-1k");
//! assert_eq!(flags, DebugFlags::RED_ZONE | DebugFlags::POISON);
//! assert!(DebugFlags::for_cache(Some(Some("ZP,kmalloc-*")), "lkdtm-heap-a").is_empty());
//! let layout = ObjectLayout::new(1024, flags);
//! assert_eq!((layout.red_zone, layout.free_pointer, layout.size), (1024..1032, 1032, 1040));
//! ```

use core::ops::{BitOr, Range};

/// Poison of a free object's bytes (Linux's `POISON_FREE`).
pub const POISON_FREE: u8 = 0x6b;
/// Poison of a free object's last byte (`POISON_END`).
pub const POISON_END: u8 = 0xa5;
/// Red zone of a free object (`SLUB_RED_INACTIVE`).
pub const RED_INACTIVE: u8 = 0xbb;
/// Red zone of an allocated object, and the bytes of a `kmalloc` object beyond the size asked
/// for (`SLUB_RED_ACTIVE`).
pub const RED_ACTIVE: u8 = 0xcc;

/// Debug checks of a cache (Linux's `SLAB_CONSISTENCY_CHECKS`, `SLAB_RED_ZONE`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugFlags(u8);

impl DebugFlags {
    /// `F`: consistency checks (a double free is "Object already free").
    pub const CONSISTENCY: Self = Self(1);
    /// `Z`: a red zone after each object, checked on free and allocation.
    pub const RED_ZONE: Self = Self(2);
    /// `P`: free objects are poisoned, and the poison is checked on allocation.
    pub const POISON: Self = Self(4);
    /// `U`: owner tracking. Accepted but not kept: this kernel records no allocation sites.
    pub const STORE_USER: Self = Self(8);
    /// What a bare `slab_debug` turns on (Linux's `DEBUG_DEFAULT_FLAGS`: `FZPU`).
    pub const DEFAULT: Self = Self(1 | 2 | 4 | 8);
    /// None.
    pub const NONE: Self = Self(0);

    /// Whether no check is on.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is on.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits (for storing in an atomic).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Flags from raw bits.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & Self::DEFAULT.0)
    }

    /// The checks one option string turns on (`FZPU`, `-` for none; letters Linux knows but
    /// this kernel does not check — `T`, `A`, `O` — are accepted and ignored).
    fn parse_options(options: &str) -> Self {
        let mut flags = Self::NONE;
        for c in options.chars() {
            flags = match c.to_ascii_uppercase() {
                'F' => flags | Self::CONSISTENCY,
                'Z' => flags | Self::RED_ZONE,
                'P' => flags | Self::POISON,
                'U' => flags | Self::STORE_USER,
                '-' => Self::NONE,
                _ => flags,
            };
        }
        if options.is_empty() {
            Self::DEFAULT
        } else {
            flags
        }
    }

    /// The checks of cache `name` under the boot parameter `param` (as `Cmdline::get` returns
    /// it: `None` absent, `Some(None)` bare, `Some(Some(value))`). The value is blocks separated
    /// by `;`, each `options[,cache,cache...]`; a block without caches sets the default for all,
    /// the first block naming the cache (a trailing `*` matches a prefix) wins.
    pub fn for_cache(param: Option<Option<&str>>, name: &str) -> Self {
        let text = match param {
            None => return Self::NONE,
            Some(None) => return Self::DEFAULT,
            Some(Some(text)) => text,
        };
        let mut global = Self::NONE;
        for block in text.split(';') {
            let mut parts = block.split(',');
            let options = Self::parse_options(parts.next().unwrap_or(""));
            let mut caches = parts.filter(|c| !c.is_empty()).peekable();
            if caches.peek().is_none() {
                global = options;
            } else if caches.any(|pattern| matches(pattern, name)) {
                return options;
            }
        }
        global
    }
}

impl BitOr for DebugFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Where the parts of one object are, as offsets from its start. Without debugging the free
/// pointer is the word in the middle of the object (Linux since 5.7, so that an overflow from
/// the previous object, or a write after free at the start, misses it); with any check it
/// moves past the object (and its red zone) so poison and red zones can cover the object whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    /// The object's size (what the cache hands out).
    pub object_size: usize,
    /// The red zone: the bytes from the object's end to the free pointer (empty without `Z`).
    pub red_zone: Range<usize>,
    /// Offset of the free pointer.
    pub free_pointer: usize,
    /// Distance between objects (16-byte aligned).
    pub size: usize,
}

impl ObjectLayout {
    /// The layout of objects of `object_size` bytes with `flags`.
    pub fn new(object_size: usize, flags: DebugFlags) -> Self {
        let word = core::mem::size_of::<u64>();
        let inuse = object_size.next_multiple_of(word).max(word);
        if flags.is_empty() {
            let free_pointer = (object_size / 2) & !(word - 1);
            return Self { object_size, red_zone: object_size..object_size, free_pointer, size: inuse };
        }
        // Z: a red zone up to the next word, and a whole word when the object ends on one.
        let red_end = if flags.contains(DebugFlags::RED_ZONE) {
            if inuse == object_size {
                inuse + word
            } else {
                inuse
            }
        } else {
            inuse
        };
        let red_zone =
            if flags.contains(DebugFlags::RED_ZONE) { object_size..red_end } else { object_size..object_size };
        Self { object_size, red_zone, free_pointer: red_end, size: (red_end + word).next_multiple_of(16) }
    }

    /// Objects of this layout that fit in `bytes` of slab.
    pub fn objects_in(&self, bytes: usize) -> usize {
        bytes / self.size
    }
}

/// The first byte of `bytes` that is not `value`: its offset and what it holds.
pub fn first_mismatch(bytes: &[u8], value: u8) -> Option<(usize, u8)> {
    bytes.iter().position(|&b| b != value).map(|i| (i, bytes[i]))
}

/// The first byte of a free object that is not its poison (`POISON_FREE` up to the last byte,
/// which is `POISON_END`): its offset, what it holds and what it should hold.
pub fn poison_mismatch(object: &[u8]) -> Option<(usize, u8, u8)> {
    let (last, body) = object.split_last()?;
    if let Some((i, found)) = first_mismatch(body, POISON_FREE) {
        return Some((i, found, POISON_FREE));
    }
    (*last != POISON_END).then_some((body.len(), *last, POISON_END))
}

/// Poisons a free object's bytes.
pub fn poison(object: &mut [u8]) {
    if let Some((last, body)) = object.split_last_mut() {
        body.fill(POISON_FREE);
        *last = POISON_END;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_parameter_selects_caches() {
        assert!(DebugFlags::for_cache(None, "kmalloc-64").is_empty());
        assert_eq!(DebugFlags::for_cache(Some(None), "kmalloc-64"), DebugFlags::DEFAULT);
        assert_eq!(DebugFlags::for_cache(Some(Some("")), "kmalloc-64"), DebugFlags::DEFAULT);
        assert_eq!(DebugFlags::for_cache(Some(Some("p")), "x"), DebugFlags::POISON, "lower case works too");
        let text = Some(Some("FZ;-,kmalloc-1k;P,lkdtm-*"));
        assert_eq!(DebugFlags::for_cache(text, "kmalloc-64"), DebugFlags::CONSISTENCY | DebugFlags::RED_ZONE);
        assert!(DebugFlags::for_cache(text, "kmalloc-1k").is_empty(), "- turns it off for that cache");
        assert_eq!(DebugFlags::for_cache(text, "lkdtm-heap-a"), DebugFlags::POISON);
        assert_eq!(DebugFlags::for_cache(Some(Some("TAO")), "x"), DebugFlags::NONE, "known, not checked here");
        assert_eq!(DebugFlags::from_bits(0xff), DebugFlags::DEFAULT);
    }

    #[test]
    fn layouts() {
        let plain = ObjectLayout::new(64, DebugFlags::NONE);
        assert_eq!((plain.free_pointer, plain.size, plain.red_zone.is_empty()), (32, 64, true));
        assert_eq!(ObjectLayout::new(16, DebugFlags::NONE).free_pointer, 8);
        assert_eq!(ObjectLayout::new(8, DebugFlags::NONE).free_pointer, 0);
        let z = ObjectLayout::new(64, DebugFlags::RED_ZONE);
        assert_eq!((z.red_zone.clone(), z.free_pointer, z.size), (64..72, 72, 80));
        let p = ObjectLayout::new(64, DebugFlags::POISON);
        assert_eq!((p.red_zone.is_empty(), p.free_pointer, p.size), (true, 64, 80));
        let odd = ObjectLayout::new(20, DebugFlags::RED_ZONE);
        assert_eq!((odd.red_zone, odd.free_pointer, odd.size), (20..24, 24, 32));
        assert_eq!(ObjectLayout::new(1024, DebugFlags::DEFAULT).objects_in(4096), 3);
    }

    #[test]
    fn poison_and_red_zone_checks() {
        let mut object = [0u8; 16];
        poison(&mut object);
        assert_eq!((object[0], object[14], object[15]), (POISON_FREE, POISON_FREE, POISON_END));
        assert_eq!(poison_mismatch(&object), None);
        object[8] = 0xf0;
        assert_eq!(poison_mismatch(&object), Some((8, 0xf0, POISON_FREE)));
        object[8] = POISON_FREE;
        object[15] = 0;
        assert_eq!(poison_mismatch(&object), Some((15, 0, POISON_END)));
        assert_eq!(first_mismatch(&[RED_ACTIVE, RED_ACTIVE, 0x78], RED_ACTIVE), Some((2, 0x78)));
        assert_eq!(first_mismatch(&[], RED_ACTIVE), None);
        assert_eq!(poison_mismatch(&[]), None);
    }
}
