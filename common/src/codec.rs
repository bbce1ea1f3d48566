//! Helpers for the TLS presentation language (RFC 8446, Section 3) that prio's `codec` module does
//! not offer: opaque byte vectors read in one slice copy, with the lower bounds DAP declares, and
//! the "rest of the message" vectors whose length is the HTTP body's.

use prio::codec::{CodecError, Decode, Encode};
use std::io::{Cursor, Read};

/// Error for a vector whose length lies outside the range its declaration allows.
pub(crate) fn out_of_range(what: &'static str) -> CodecError {
    CodecError::Other(format!("{what}: length outside the range the spec allows").into())
}

fn read_slice<'a>(bytes: &mut Cursor<&'a [u8]>, len: usize) -> Result<&'a [u8], CodecError> {
    let start = bytes.position() as usize;
    let buf: &'a [u8] = bytes.get_ref();
    let end = start.checked_add(len).filter(|end| *end <= buf.len()).ok_or(CodecError::LengthPrefixTooBig(len))?;
    bytes.set_position(end as u64);
    Ok(&buf[start..end])
}

/// Reads exactly `N` bytes, as for `opaque X[N]`.
pub(crate) fn decode_array<const N: usize>(bytes: &mut Cursor<&[u8]>) -> Result<[u8; N], CodecError> {
    let mut out = [0u8; N];
    bytes.read_exact(&mut out)?;
    Ok(out)
}

macro_rules! opaque_codec {
    ($enc:ident, $dec:ident, $span:ident, $len:ty) => {
        /// Encodes `opaque data<min..2^N-1>`; fails if `data` is longer than the prefix allows.
        pub(crate) fn $enc(bytes: &mut Vec<u8>, data: &[u8]) -> Result<(), CodecError> {
            let len = <$len>::try_from(data.len()).map_err(|_| CodecError::LengthPrefixOverflow)?;
            len.encode(bytes)?;
            bytes.extend_from_slice(data);
            Ok(())
        }

        /// Decodes `opaque data<min..2^N-1>`, rejecting a vector shorter than `min`.
        pub(crate) fn $dec(bytes: &mut Cursor<&[u8]>, min: usize, what: &'static str) -> Result<Vec<u8>, CodecError> {
            Ok($span(bytes, min, what)?.to_vec())
        }

        /// Reads `opaque data<min..2^N-1>` in place: the data's bytes inside the buffer.
        #[allow(dead_code)] // not every width is read in place
        pub(crate) fn $span<'a>(
            bytes: &mut Cursor<&'a [u8]>,
            min: usize,
            what: &'static str,
        ) -> Result<&'a [u8], CodecError> {
            let len = <$len>::decode(bytes)? as usize;
            if len < min {
                return Err(out_of_range(what));
            }
            read_slice(bytes, len)
        }
    };
}

opaque_codec!(encode_opaque_u8, decode_opaque_u8, opaque_u8_in_place, u8);
opaque_codec!(encode_opaque_u16, decode_opaque_u16, opaque_u16_in_place, u16);
opaque_codec!(encode_opaque_u32, decode_opaque_u32, opaque_u32_in_place, u32);

/// Runs `read` on `bytes` and returns it with the bytes it consumed: a structure's own encoding,
/// for code that stores or forwards what it received instead of encoding it again.
pub(crate) fn consumed<'a, T>(
    bytes: &mut Cursor<&'a [u8]>,
    read: impl FnOnce(&mut Cursor<&'a [u8]>) -> Result<T, CodecError>,
) -> Result<(T, &'a [u8]), CodecError> {
    let start = bytes.position() as usize;
    let value = read(bytes)?;
    let buf: &'a [u8] = bytes.get_ref();
    Ok((value, &buf[start..bytes.position() as usize]))
}

/// Decodes a `T items<0..2^16-1>` list.
pub(crate) fn decode_u16_list<T: Decode>(bytes: &mut Cursor<&[u8]>) -> Result<Vec<T>, CodecError> {
    let len = u16::decode(bytes)? as usize;
    decode_all(read_slice(bytes, len)?)
}

/// Encodes a `T items<0..2^16-1>` list.
pub(crate) fn encode_u16_list<T: Encode>(bytes: &mut Vec<u8>, items: &[T]) -> Result<(), CodecError> {
    let at = bytes.len();
    0u16.encode(bytes)?;
    for item in items {
        item.encode(bytes)?;
    }
    let len = u16::try_from(bytes.len() - at - 2).map_err(|_| CodecError::LengthPrefixOverflow)?;
    bytes[at..at + 2].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decodes items until `bytes` is used up: DAP's `T items[message_length]` vectors, and the
/// inside of a length-prefixed list.
pub(crate) fn decode_all<T: Decode>(bytes: &[u8]) -> Result<Vec<T>, CodecError> {
    read_all(bytes, T::decode)
}

/// Reads items with `read` until `bytes` is used up: [`decode_all`] for readers that borrow
/// from the buffer.
pub(crate) fn read_all<'a, T>(
    bytes: &'a [u8],
    mut read: impl FnMut(&mut Cursor<&'a [u8]>) -> Result<T, CodecError>,
) -> Result<Vec<T>, CodecError> {
    let mut cursor = Cursor::new(bytes);
    let mut items = Vec::new();
    while (cursor.position() as usize) < bytes.len() {
        items.push(read(&mut cursor)?);
    }
    Ok(items)
}

/// Decodes the rest of the cursor's buffer as a sequence of `T`.
pub(crate) fn decode_rest<T: Decode>(bytes: &mut Cursor<&[u8]>) -> Result<Vec<T>, CodecError> {
    let start = bytes.position() as usize;
    let buf: &[u8] = bytes.get_ref();
    let rest = &buf[start.min(buf.len())..];
    let items = decode_all(rest)?;
    bytes.set_position(buf.len() as u64);
    Ok(items)
}
