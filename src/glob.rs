//! Redis glob patterns (`SCAN ... MATCH`), so that the embedded backend matches keys
//! exactly as Redis does: `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and `\` escapes, byte-wise.
//! No crate implements Redis's dialect (backslash escapes, `^` negation, no path
//! separators), so this follows Redis's `stringmatchlen` (src/util.c), edge cases and
//! all, but in O(text × pattern) time: Redis backtracks into every `*` (up to a nesting
//! limit), this matcher only into the last one (see `match_tokens`).

/// The deepest `*` nesting Redis follows (CVE-2024-31228): past it, no match.
const MAX_NESTING: usize = 1000;

/// `text` with every glob character escaped, so a pattern matches it literally.
pub fn escape(text: &str) -> String {
  let mut escaped = String::with_capacity(text.len() + 4);
  for c in text.chars() {
    if matches!(c, '*' | '?' | '[' | ']' | '\\') {
      escaped.push('\\');
    }
    escaped.push(c);
  }
  escaped
}

/// The literal text every match of `pattern` starts with (for an index range scan).
pub fn literal_prefix(pattern: &str) -> String {
  let mut prefix = String::new();
  let mut chars = pattern.chars();
  while let Some(c) = chars.next() {
    match c {
      '*' | '?' | '[' => break,
      '\\' => match chars.next() {
        Some(next) => prefix.push(next),
        None => break,
      },
      other => prefix.push(other),
    }
  }
  prefix
}

/// Whether `text` matches the Redis glob `pattern`, as `SCAN ... MATCH` and `KEYS`
/// decide it, in O(text × pattern) time. Redis's edge cases included: `*` alone
/// matches every key (the commands skip matching for it); otherwise the empty text
/// matches only the empty pattern; and a pattern whose 1,001st run of `*` is followed
/// by more pattern matches nothing (Redis's nesting limit).
pub fn matches(pattern: &str, text: &str) -> bool {
  if pattern == "*" {
    return true;
  }
  if text.is_empty() {
    return pattern.is_empty();
  }
  let tokens = compile(pattern.as_bytes());
  !too_nested(&tokens) && match_tokens(&tokens, text.as_bytes())
}

/// One element of a compiled pattern.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Token {
  /// A run of `*`: any bytes, none included.
  Star,
  /// `?`, a class or a literal byte: exactly one byte of the set.
  Byte(ByteSet),
}

/// A set of bytes, one bit each.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ByteSet([u64; 4]);

impl ByteSet {
  const NONE: Self = Self([0; 4]);
  const ALL: Self = Self([u64::MAX; 4]);

  fn with(mut self, byte: u8) -> Self {
    self.0[usize::from(byte >> 6)] |= 1 << (byte & 63);
    self
  }

  /// With the bytes between `start` and `end`, in either order, compared as C `char`s
  /// are where Redis is usually built (x86-64): signed, so `0x80..=0xFF` sort first.
  fn with_range(self, start: u8, end: u8) -> Self {
    let (start, end) = (start as i8, end as i8);
    (start.min(end)..=start.max(end)).fold(self, |set, byte| set.with(byte as u8))
  }

  fn contains(self, byte: u8) -> bool {
    self.0[usize::from(byte >> 6)] >> (byte & 63) & 1 == 1
  }
}

/// The pattern's elements, as Redis reads them: a run of `*` is one `*`; `\x` is
/// the literal `x`, but a trailing `\` is a literal backslash.
fn compile(pattern: &[u8]) -> Vec<Token> {
  let mut tokens = Vec::with_capacity(pattern.len());
  let mut at = 0;
  loop {
    let (token, width) = match pattern[at..] {
      [] => return tokens,
      [b'*', ..] => (Token::Star, 1),
      [b'?', ..] => (Token::Byte(ByteSet::ALL), 1),
      [b'[', ..] => class(&pattern[at..]),
      [b'\\', escaped, ..] => (Token::Byte(ByteSet::NONE.with(escaped)), 2),
      [literal, ..] => (Token::Byte(ByteSet::NONE.with(literal)), 1),
    };
    at += width;
    if token != Token::Star || tokens.last() != Some(&Token::Star) {
      tokens.push(token);
    }
  }
}

/// The class at the start of `pattern` (`[`), as Redis reads it, and its length.
/// A leading `^` negates; `]` closes, even first (`[]` matches nothing, `[^]` any
/// byte); `\x` is `x`; `a-z` is a range, reversed ones too, whose end may be any byte,
/// `]` included (so `[a-]` does not close there); an unclosed class ends the pattern.
fn class(pattern: &[u8]) -> (Token, usize) {
  let negate = pattern.get(1) == Some(&b'^');
  let (mut set, mut at) = (ByteSet::NONE, 1 + usize::from(negate));
  let len = loop {
    match pattern[at..] {
      [] => break at,
      [b'\\', escaped, ..] => (set, at) = (set.with(escaped), at + 2),
      [b']', ..] => break at + 1,
      [start, b'-', end, ..] => (set, at) = (set.with_range(start, end), at + 3),
      [byte, ..] => (set, at) = (set.with(byte), at + 1),
    }
  };
  if negate {
    set = ByteSet(set.0.map(|bits| !bits));
  }
  (Token::Byte(set), len)
}

/// Whether Redis would give up at its nesting limit: when its 1,001st run of `*` has
/// more pattern after it (a final one matches the rest of any text without recursing).
fn too_nested(tokens: &[Token]) -> bool {
  let end = tokens.len();
  let mut stars = (0..end).filter(|&at| tokens[at] == Token::Star);
  stars.nth(MAX_NESTING).is_some_and(|at| at + 1 < end)
}

/// The greedy two-pointer match: each `*` first takes no bytes; on a mismatch the last
/// `*` takes one more and matching resumes after it. Earlier stars never need to take
/// more, since every other element is one byte wide. At most text × tokens steps.
fn match_tokens(tokens: &[Token], text: &[u8]) -> bool {
  let (mut next, mut at) = (0, 0);
  // Since the last `*`: the token after it, and where the bytes it takes end.
  let mut resume: Option<(usize, usize)> = None;
  while at < text.len() {
    match tokens.get(next) {
      Some(Token::Star) => (next, resume) = (next + 1, Some((next + 1, at))),
      Some(Token::Byte(set)) if set.contains(text[at]) => (next, at) = (next + 1, at + 1),
      _ => match resume {
        Some((after_star, end)) => {
          (next, at, resume) = (after_star, end + 1, Some((after_star, end + 1)));
        }
        None => return false,
      },
    }
  }
  tokens[next..].iter().all(|token| *token == Token::Star)
}

#[cfg(test)]
mod tests {
  use super::*;

  /// A port of Redis's `stringmatchlen_impl` (src/util.c, with the nesting limit of
  /// CVE-2024-31228), close to the C (reads past the end find no `*`, `^`, `]` or `\`,
  /// as the C string's NUL; `skip` is `skipLongerMatches`). It backtracks into every
  /// `*`, so it is a reference for small inputs only.
  struct Redis<'a> {
    pat: &'a [u8],
    s: &'a [u8],
  }

  impl Redis<'_> {
    fn run(&self, mut p: usize, mut i: usize, nesting: usize, skip: &mut bool) -> bool {
      if nesting > MAX_NESTING {
        return false;
      }
      while p < self.pat.len() && i < self.s.len() {
        let mut matched = true;
        match self.pat[p] {
          b'*' => return self.star(p, i, nesting, skip),
          b'?' => {}
          b'[' => (matched, p) = self.class(p, self.s[i]),
          b'\\' if p + 1 < self.pat.len() => (matched, p) = (self.pat[p + 1] == self.s[i], p + 1),
          literal => matched = literal == self.s[i],
        }
        if !matched {
          return false;
        }
        (p, i) = (p + 1, i + 1);
        if i == self.s.len() {
          while self.pat.get(p) == Some(&b'*') {
            p += 1;
          }
        }
      }
      p == self.pat.len() && i == self.s.len()
    }

    fn star(&self, mut p: usize, i: usize, nesting: usize, skip: &mut bool) -> bool {
      while self.pat.get(p + 1) == Some(&b'*') {
        p += 1;
      }
      if p + 1 == self.pat.len() {
        return true;
      }
      for start in i..self.s.len() {
        if self.run(p + 1, start, nesting + 1, skip) {
          return true;
        }
        if *skip {
          return false;
        }
      }
      *skip = true;
      false
    }

    /// Whether the class at `pat[p]` (`[`) matches `c`, and its last byte's index.
    fn class(&self, mut p: usize, c: u8) -> (bool, usize) {
      let negate = self.pat.get(p + 1) == Some(&b'^');
      p += 1 + usize::from(negate);
      let mut matched = false;
      loop {
        let len = self.pat.len() - p;
        if self.pat.get(p) == Some(&b'\\') && len >= 2 {
          p += 1;
          matched |= self.pat[p] == c;
        } else if self.pat.get(p) == Some(&b']') {
          break;
        } else if len == 0 {
          p -= 1;
          break;
        } else if len >= 3 && self.pat[p + 1] == b'-' {
          let (start, end) = (self.pat[p] as i8, self.pat[p + 2] as i8);
          matched |= (start.min(end)..=start.max(end)).contains(&(c as i8));
          p += 2;
        } else {
          matched |= self.pat[p] == c;
        }
        p += 1;
      }
      (matched != negate, p)
    }
  }

  /// What `KEYS pattern` answers for `text`, by the port (`*` alone skips matching).
  fn reference(pattern: &str, text: &str) -> bool {
    let (pat, s) = (pattern.as_bytes(), text.as_bytes());
    pattern == "*" || Redis { pat, s }.run(0, 0, 0, &mut false)
  }

  /// Asserts that the matcher and the port of Redis both answer `expected`.
  fn check(pattern: &str, text: &str, expected: bool) {
    assert_eq!(matches(pattern, text), expected, "{pattern:?} ~ {text:?}");
    assert_eq!(reference(pattern, text), expected, "{pattern:?} ~ {text:?}");
  }

  #[test]
  fn wildcards_and_classes_match_as_in_redis() {
    assert!(matches("user:*", "user:1"));
    assert!(matches("user:*", "user:"));
    assert!(!matches("user:*", "use"));
    assert!(matches("h?llo", "hello"));
    assert!(!matches("h?llo", "hllo"));
    assert!(matches("h[ae]llo", "hallo"));
    assert!(!matches("h[ae]llo", "hillo"));
    assert!(matches("h[^e]llo", "hallo"));
    assert!(!matches("h[^e]llo", "hello"));
    assert!(matches("h[a-b]llo", "hbllo"));
    assert!(matches("h[b-a]llo", "hallo"));
    assert!(matches("*:*:x", "a:b:c:x"));
    assert!(matches("a**b", "ab"));
  }

  /// `(pattern, texts it matches, texts it does not)`: every construct and edge case.
  const CASES: &[(&str, &[&str], &[&str])] = &[
    // Literals; the empty text matches only "" (and `*`, which the commands skip).
    ("", &[""], &["a"]),
    ("abc", &["abc"], &["", "ab", "abcd", "abd"]),
    ("*", &["", "anything"], &[]),
    ("**", &["x"], &[""]),
    ("*?", &["a", "ab"], &[""]),
    // Stars: any bytes, none included; a run of them is one.
    ("a***", &["a", "ab"], &["b"]),
    ("a*b", &["ab", "axxb", "abab"], &["abc", "ba"]),
    ("*a*b*", &["xaybz", "ab"], &["xbya"]),
    ("?*?", &["ab", "abc"], &["a"]),
    // `?` is one byte, not one character.
    ("?", &["a", "*"], &["é", ""]),
    ("??", &["é", "ab"], &["a"]),
    // Escapes: `\x` is `x`; a trailing `\` is itself.
    ("\\*", &["*"], &["a", "\\*"]),
    ("\\?\\[a]", &["?[a]"], &["?a"]),
    ("\\a\\\\", &["a\\"], &["a"]),
    ("a\\", &["a\\"], &["a"]),
    ("\\", &["\\"], &[""]),
    // Classes, `^` negation (first only), ranges (reversed ones too).
    ("[abc]", &["a", "c"], &["d", "", "ab"]),
    ("[^abc]", &["d", "^"], &["a"]),
    ("[a^]", &["^", "a"], &["b"]),
    ("[a-c]", &["a", "b", "c"], &["d", "-"]),
    ("[c-a]", &["b"], &["d"]),
    ("[-a]", &["-", "a"], &["b"]),
    ("[a-cx-z]", &["b", "y"], &["m", "-"]),
    // `]` closes even first: `[]` matches nothing, `[^]` any byte; `[]]` is `[]` + `]`.
    ("[]", &[], &["a", "]", ""]),
    ("[]a", &[], &["a", "]a"]),
    ("[^]a", &["xa", "]a"], &["a"]),
    ("[]]", &[], &["]", "]]"]),
    // Escapes in classes; a range ends at any byte, `]` too: `[a-]b]` is `]`..`a` or `b`.
    ("[\\]]", &["]"], &["\\"]),
    ("[\\^a]", &["^", "a"], &["b"]),
    ("[a\\-c]", &["a", "-", "c"], &["b"]),
    ("[a-]b]", &["]", "_", "a", "b"], &["-", "c"]),
    // An unclosed class runs to the end of the pattern, stars and all.
    ("[a-]", &["]", "a"], &["a]", "-"]),
    ("[ab", &["a", "b"], &["ab", "["]),
    ("[a*", &["*"], &["ab"]),
    ("[a-", &["a", "-"], &["b"]),
    ("[", &[], &["[", ""]),
    ("[^", &["x", "^"], &[""]),
    ("[a\\", &["\\", "a"], &["b"]),
    // Ranges compare bytes as signed C chars: é is 0xC3 0xA9, and 0xC3 sorts below `a`.
    ("[a-é]", &["a", "A"], &["b", "ÿ"]),
  ];

  #[test]
  fn every_construct_matches_as_in_redis() {
    for &(pattern, matching, other) in CASES {
      matching.iter().for_each(|text| check(pattern, text, true));
      other.iter().for_each(|text| check(pattern, text, false));
    }
  }

  #[test]
  fn past_the_nesting_limit_nothing_matches_as_in_redis() {
    let text = "a".repeat(1001);
    for (runs, tail, expected) in [(1000, "", true), (1001, "", false), (1001, "*", false)] {
      check(&("*?".repeat(runs) + tail), &text, expected);
    }
    // A last run of `*` past the limit matches without recursing, in Redis too.
    let ends_in_star = "*a".repeat(1000) + "*";
    check(&ends_in_star, &text, true);
    // Redis's own regression test (tests/unit/keyspace.tcl).
    assert!(!matches(&"*?".repeat(50_000), &"a".repeat(50_000)));
  }

  /// A tiny deterministic PRNG (xorshift64), so that failures are reproducible.
  struct Rng(u64);

  impl Rng {
    fn below(&mut self, n: usize) -> usize {
      self.0 ^= self.0 << 13;
      self.0 ^= self.0 >> 7;
      self.0 ^= self.0 << 17;
      (self.0 >> 32) as usize % n
    }

    fn string(&mut self, parts: &[&str], max_parts: usize) -> String {
      let len = self.below(max_parts + 1);
      (0..len).map(|_| parts[self.below(parts.len())]).collect()
    }
  }

  #[test]
  fn agrees_with_the_redis_port_on_generated_inputs() {
    let pattern_parts = ["a", "b", "-", "]", "*", "*", "?", "[", "[", "^", "\\", "é"];
    let text_parts = ["a", "b", "c", "-", "]", "*", "\\", "^", "é"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..200_000 {
      let (pattern, text) = (rng.string(&pattern_parts, 8), rng.string(&text_parts, 7));
      let expected = reference(&pattern, &text);
      assert_eq!(matches(&pattern, &text), expected, "{pattern:?} ~ {text:?}");
    }
  }

  #[test]
  fn pathological_patterns_take_bounded_work() {
    // Keys of 1,000 bytes: `a`s, then their index.
    let keys: Vec<String> = (0..1000).map(|i| format!("{i:a>1000}")).collect();
    let a99 = "a".repeat(99);
    let patterns = [
      ("a*".repeat(20) + "b", 0),
      ("a*".repeat(100) + "b", 0),
      ("*?".repeat(100) + "b", 0),
      (format!("*{a99}*{a99}b"), 0),
      ("a*".repeat(100) + "7", 100),
      ("*a".repeat(100) + "*[09]", 200),
    ];
    for (pattern, expected) in patterns {
      let found = keys.iter().filter(|key| matches(&pattern, key)).count();
      assert_eq!(found, expected, "{pattern}");
    }
  }

  #[test]
  fn escaped_text_matches_only_itself() {
    for literal in ["a*[x]:", "q?", "back\\slash", "[^]", "plain"] {
      let pattern = escape(literal);
      assert!(matches(&pattern, literal), "{literal}");
      assert_eq!(literal_prefix(&pattern), literal);
      assert!(matches(&format!("{pattern}*"), &format!("{literal}tail")));
    }
    assert!(!matches(&escape("a*"), "ab"));
    assert!(!matches(&format!("{}*", escape("a?:")), "ab:1"));
  }

  #[test]
  fn literal_prefix_stops_at_the_first_wildcard() {
    assert_eq!(literal_prefix("app:user:*"), "app:user:");
    assert_eq!(literal_prefix("a\\*b?c"), "a*b");
    assert_eq!(literal_prefix("[ab]"), "");
  }
}
