//! Name patterns for issuance policies. `*` matches any run of characters
//! except a separator; `**` matches any run including separators.

/// How a pattern is matched: the linear forms directly, any other token by token.
enum Shape<'a> {
    /// No `*`: the name must be the pattern.
    Literal(&'a str),
    /// `**` then a literal: any name ending with it.
    AnySuffix(&'a str),
    /// `*` then a literal: a name ending with it after a run without separators.
    SegmentSuffix(&'a str),
    /// A `*` after the leading one.
    Tokens,
}

fn shape(pattern: &str) -> Shape<'_> {
    let literal = |rest: &&str| !rest.contains('*');
    if let Some(suffix) = pattern.strip_prefix("**").filter(literal) {
        Shape::AnySuffix(suffix)
    } else if let Some(suffix) = pattern.strip_prefix('*').filter(literal) {
        Shape::SegmentSuffix(suffix)
    } else if literal(&pattern) {
        Shape::Literal(pattern)
    } else {
        Shape::Tokens
    }
}

/// Whether matching `pattern` takes time linear in the name: a literal, or one leading `*` or
/// `**` before a literal suffix (`*.example.com`), as nearly every policy's patterns are.
pub fn is_linear(pattern: &str) -> bool {
    !matches!(shape(pattern), Shape::Tokens)
}

/// What matching `patterns` against one name of `len` bytes costs at most, in steps: a linear
/// pattern ([`is_linear`]) the two lengths, any other their product.
pub fn cost(patterns: &[String], len: usize) -> usize {
    patterns
        .iter()
        .map(|p| match is_linear(p) {
            true => len.saturating_add(p.len()).saturating_add(1),
            false => len.saturating_add(2).saturating_mul(p.len()),
        })
        .fold(0, usize::saturating_add)
}

/// Whether `name` matches `pattern`. Linear for a literal or a leading `*` or `**`, otherwise in
/// the product of the lengths; no backtracking blow-up.
pub fn matches(pattern: &str, name: &str, separators: &[char]) -> bool {
    match shape(pattern) {
        Shape::Literal(literal) => literal == name,
        Shape::AnySuffix(suffix) => name.ends_with(suffix),
        Shape::SegmentSuffix(suffix) => name.strip_suffix(suffix).is_some_and(|head| !head.contains(separators)),
        Shape::Tokens => by_tokens(pattern, name, separators),
    }
}

/// [`matches`] for any pattern, token by token over every prefix of the name.
fn by_tokens(pattern: &str, name: &str, separators: &[char]) -> bool {
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

    /// The linear forms answer as matching token by token does, on names that tell them apart.
    #[test]
    fn the_linear_forms_agree_with_matching_by_tokens() {
        let names =
            ["", ".", "a", "www.example.com", "a.b.example.com", "example.com", ".example.com", "x/y", "*.example.com"];
        let patterns =
            ["", "*", "**", "example.com", "*.example.com", "**.example.com", "*example.com", "*/y", "**/y", "a"];
        for pattern in patterns {
            assert!(super::is_linear(pattern), "{pattern}");
            for name in names {
                for separators in [&['.'][..], &['/'], &[]] {
                    assert_eq!(
                        matches(pattern, name, separators),
                        super::by_tokens(pattern, name, separators),
                        "{pattern:?} against {name:?} with {separators:?}"
                    );
                }
            }
        }
        // Patterns with a star after the leading one are matched token by token, whatever they start with.
        let names = ["x.ab.com", "x.y.ab.com", "ab.com", "x.a.com", "a-b"];
        for pattern in ["a*b", "*a*", "***", "*.a*.com", "**.a*.com", "web-*.example.com", "spiffe://td/ns/*/sa/*"] {
            assert!(!super::is_linear(pattern), "{pattern}");
            for name in names {
                let expected = super::by_tokens(pattern, name, &['.']);
                assert_eq!(matches(pattern, name, &['.']), expected, "{pattern:?} against {name:?}");
            }
        }
        assert!(matches("*.a*.com", "x.ab.com", &['.']) && matches("**.a*.com", "x.y.ab.com", &['.']));
        assert_eq!(super::cost(&["*.a".into(), "a*b".into()], 10), (10 + 3 + 1) + 12 * 3);
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let pattern = "*a".repeat(50);
        let name = "a".repeat(300) + "b";
        assert!(!matches(&pattern, &name, &[]));
    }
}
