//! Little-endian field reading and writing shared by Lode's on-disk formats (blocks,
//! chunks, WAL records, segment footers).
//!
//! Owns bounds-checked decoding: every read names the field it wanted, and no read panics
//! or allocates more than the input could hold. It does not own any format's layout.

use bytes::{Buf, BufMut};

/// Input ended or held invalid text where a field was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated input: {field} needs {need} bytes, {have} left")]
    Truncated {
        field: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{field} is not valid utf-8")]
    Utf8 { field: &'static str },
}

/// Appends a length-prefixed (u32) byte string.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32_le(u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.put_slice(b);
}

/// Appends a length-prefixed UTF-8 string.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, field: &'static str, n: usize) -> Result<(), WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated {
                field,
                need: n,
                have: self.buf.len(),
            });
        }
        Ok(())
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        self.need(field, 1)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.need(field, 2)?;
        Ok(self.buf.get_u16_le())
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.need(field, 4)?;
        Ok(self.buf.get_u32_le())
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.need(field, 8)?;
        Ok(self.buf.get_u64_le())
    }

    pub fn i64(&mut self, field: &'static str) -> Result<i64, WireError> {
        self.need(field, 8)?;
        Ok(self.buf.get_i64_le())
    }

    /// The next `n` bytes, borrowed.
    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        self.need(field, n)?;
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A u32-length-prefixed byte string.
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.u32(field)? as usize;
        self.take(field, n)
    }

    /// A u32-length-prefixed UTF-8 string.
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b).map_err(|_| WireError::Utf8 { field })
    }

    /// A count of items each at least `min_item` bytes long, capped by what is left so a
    /// corrupt count cannot make the caller preallocate without bound.
    pub fn count(&mut self, field: &'static str, min_item: usize) -> Result<usize, WireError> {
        let n = self.u32(field)? as usize;
        let most = self.buf.len() / min_item.max(1);
        if n > most {
            return Err(WireError::Truncated {
                field,
                need: n.saturating_mul(min_item.max(1)),
                have: self.buf.len(),
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_the_field_that_ran_out() {
        let mut out = Vec::new();
        put_str(&mut out, "hello");
        let mut r = Reader::new(&out[..6]);
        let err = r.str("line").unwrap_err();
        assert_eq!(
            err.to_string(),
            "truncated input: line needs 5 bytes, 2 left"
        );
    }

    #[test]
    fn counts_larger_than_the_input_are_refused() {
        let mut out = Vec::new();
        out.put_u32_le(1_000_000);
        assert!(Reader::new(&out).count("entries", 8).is_err());
    }
}
