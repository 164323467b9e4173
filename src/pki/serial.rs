//! Random certificate serial numbers.

use super::error::{PkiError, Result};
use rcgen::SerialNumber;

/// Serial numbers are 20 bytes (the RFC 5280 maximum): positive, with a
/// non-zero leading byte so the DER encoding keeps its length, which leaves
/// at least 152 random bits.
pub const SERIAL_BYTES: usize = 20;

/// Returns a fresh serial and its lowercase hex form. A failing system RNG
/// is an error: a CA must never fall back to a predictable serial.
pub fn random_serial() -> Result<(SerialNumber, String)> {
    let mut bytes = [0u8; SERIAL_BYTES];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| PkiError::Signing("the system random number generator failed".into()))?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok((SerialNumber::from_slice(&bytes), hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_distinct_and_full_length() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (serial, hex) = random_serial().unwrap();
            let bytes = serial.to_bytes();
            assert_eq!(bytes.len(), SERIAL_BYTES);
            assert!(bytes[0] & 0x80 == 0 && bytes[0] != 0);
            assert_eq!(hex.len(), 2 * SERIAL_BYTES);
            assert!(seen.insert(hex));
        }
    }
}
