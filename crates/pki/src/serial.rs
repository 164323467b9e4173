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
    let (bytes, hex) = random_serial_bytes()?;
    Ok((SerialNumber::from_slice(&bytes), hex))
}

/// [`random_serial`] as its bytes, without a `SerialNumber` to allocate.
pub fn random_serial_bytes() -> Result<([u8; SERIAL_BYTES], String)> {
    let mut bytes = [0u8; SERIAL_BYTES];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| PkiError::Signing("the system random number generator failed".into()))?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    let mut hex = String::with_capacity(2 * SERIAL_BYTES);
    for b in bytes {
        hex.extend([b >> 4, b & 0x0f].map(|digit| char::from_digit(u32::from(digit), 16).unwrap_or('0')));
    }
    Ok((bytes, hex))
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
            // Literally 20 bytes (not SERIAL_BYTES, so shrinking it fails here).
            assert_eq!(bytes.len(), 20);
            assert!(bytes[0] & 0x80 == 0 && bytes[0] != 0);
            assert_eq!(hex.len(), 40);
            assert_eq!(hex, bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
            assert!(seen.insert(hex));
        }
    }

    /// At least 128 random bits (CA/Browser Forum asks for 64; RFC 5280
    /// allows up to 20 bytes): every bit after the sign bit varies across
    /// serials, so none is fixed by the code.
    #[test]
    fn serials_carry_at_least_128_random_bits() {
        let serials: Vec<Vec<u8>> = (0..256).map(|_| random_serial().unwrap().0.to_bytes()).collect();
        let mut varying_bits = 0;
        for byte in 0..serials[0].len() {
            for bit in 0..8 {
                let ones = serials.iter().filter(|s| s[byte] & (1 << bit) != 0).count();
                if ones > 0 && ones < serials.len() {
                    varying_bits += 1;
                }
            }
        }
        // 159 bits vary (all but the sign bit); the leading byte's fix-up
        // touches only 1 in 128 serials.
        assert!(varying_bits >= 128, "only {varying_bits} bits vary");
        assert_eq!(varying_bits, 159);
    }
}
