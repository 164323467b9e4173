//! Name patterns for issuance policies. `*` matches any run of characters
//! except a separator; `**` matches any run including separators.

/// Whether `name` matches `pattern`. Linear in the product of the lengths;
/// no backtracking blow-up.
pub fn matches(pattern: &str, name: &str, separators: &[char]) -> bool {
    enum Token {
        Literal(char),
        Star,
        DoubleStar,
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '*' {
            if chars.peek() == Some(&'*') {
                chars.next();
                tokens.push(Token::DoubleStar);
            } else {
                tokens.push(Token::Star);
            }
        } else {
            tokens.push(Token::Literal(c));
        }
    }
    let name: Vec<char> = name.chars().collect();
    // reachable[j]: the tokens so far can consume exactly name[..j]. Built
    // with iterators, so no index can go out of bounds on any input.
    let mut reachable: Vec<bool> = std::iter::once(true).chain(name.iter().map(|_| false)).collect();
    for token in &tokens {
        reachable = match token {
            // next[j + 1] = reachable[j] && name[j] == c; next[0] = false.
            Token::Literal(c) => {
                std::iter::once(false).chain(reachable.iter().zip(&name).map(|(&r, n)| r && n == c)).collect()
            }
            // next[j] = some i <= j is reachable with no separator in
            // name[i..j] (a `**` crosses separators).
            Token::Star | Token::DoubleStar => {
                let crosses = matches!(token, Token::DoubleStar);
                let mut open = false;
                let following = name.iter().map(Some).chain(std::iter::once(None));
                reachable
                    .iter()
                    .zip(following)
                    .map(|(&r, next_char)| {
                        open |= r;
                        let here = open;
                        if !crosses && next_char.is_some_and(|c| separators.contains(c)) {
                            open = false;
                        }
                        here
                    })
                    .collect()
            }
        };
    }
    reachable.last().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn single_star_stays_within_a_segment() {
        assert!(matches("*.example.com", "www.example.com", &['.']));
        assert!(matches("*.example.com", "*.example.com", &['.']));
        assert!(!matches("*.example.com", "a.b.example.com", &['.']));
        assert!(!matches("*.example.com", "example.com", &['.']));
        assert!(matches("web-*.example.com", "web-1.example.com", &['.']));
        assert!(matches("spiffe://td/ns/*/sa/*", "spiffe://td/ns/default/sa/web", &['/']));
        assert!(!matches("spiffe://td/ns/*/sa/*", "spiffe://td/ns/a/b/sa/web", &['/']));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(matches("**.example.com", "a.b.example.com", &['.']));
        assert!(matches("**.example.com", "a.example.com", &['.']));
        assert!(!matches("**.example.com", "example.com", &['.']));
        assert!(matches("spiffe://td/**", "spiffe://td/ns/a/sa/b", &['/']));
        assert!(!matches("spiffe://td/**", "spiffe://other/ns/a", &['/']));
    }

    #[test]
    fn literals_must_match_exactly() {
        assert!(matches("exact.example.com", "exact.example.com", &['.']));
        assert!(!matches("exact.example.com", "exact.example.co", &['.']));
        assert!(!matches("", "a", &['.']));
        assert!(matches("*", "", &['.']));
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let pattern = "*a".repeat(50);
        let name = "a".repeat(300) + "b";
        assert!(!matches(&pattern, &name, &[]));
    }
}
