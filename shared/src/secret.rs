//! Comparing secrets: the time taken must not tell an attacker how much of a guess was right.

/// Whether `given` equals `expected`, in time that depends on their lengths only.
pub fn matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(matches("s3cret-token", "s3cret-token"));
        assert!(!matches("s3cret-tokem", "s3cret-token"));
        assert!(!matches("s3cret", "s3cret-token"));
        assert!(!matches("", "x"));
        assert!(matches("", ""));
    }
}
