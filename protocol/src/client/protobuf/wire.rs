//! The wire's small pieces: varints, byte slices, and where in a body the
//! codec is.

use super::ProtoError;

/// Where in a body the codec is, for errors: `path[2].x`.
#[derive(Default)]
pub(super) struct Path {
    pub(super) parts: Vec<String>,
    pub(super) depth: usize,
}

impl Path {
    pub(super) fn push(&mut self, name: &str) {
        self.parts.push(name.to_string());
    }
    pub(super) fn pop(&mut self) {
        self.parts.pop();
    }
    pub(super) fn index(&mut self, i: usize) {
        if let Some(last) = self.parts.last_mut() {
            last.push_str(&format!("[{i}]"));
        }
    }
    pub(super) fn unindex(&mut self) {
        if let Some(last) = self.parts.last_mut() {
            if let Some(open) = last.rfind('[') {
                last.truncate(open);
            }
        }
    }
    pub(super) fn wrong(&self, expected: &'static str) -> ProtoError {
        ProtoError::WrongType {
            field: self.to_string(),
            expected,
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub(super) fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, ProtoError> {
    let mut n: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *bytes.get(*pos).ok_or(ProtoError::Truncated)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(ProtoError::BadVarint);
        }
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(n);
        }
    }
    Err(ProtoError::BadVarint)
}

pub(super) fn get_len(bytes: &[u8], pos: &mut usize) -> Result<usize, ProtoError> {
    usize::try_from(get_varint(bytes, pos)?).map_err(|_| ProtoError::Truncated)
}

pub(super) fn take<'a>(
    bytes: &'a [u8],
    pos: &mut usize,
    len: usize,
) -> Result<&'a [u8], ProtoError> {
    let end = pos.checked_add(len).ok_or(ProtoError::Truncated)?;
    let raw = bytes.get(*pos..end).ok_or(ProtoError::Truncated)?;
    *pos = end;
    Ok(raw)
}
