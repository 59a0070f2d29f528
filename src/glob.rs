//! Redis glob patterns (`SCAN ... MATCH`), so that the embedded backend matches keys
//! exactly as Redis does: `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and `\` escapes, byte-wise.
//! No crate implements Redis's dialect (backslash escapes, `^` negation, no path
//! separators), so this is a port of Redis's `stringmatchlen` (src/util.c).

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

/// Whether `text` matches the Redis glob `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
  match_bytes(pattern.as_bytes(), text.as_bytes())
}

fn match_bytes(mut pattern: &[u8], mut text: &[u8]) -> bool {
  while let Some(&p) = pattern.first() {
    match p {
      b'*' => {
        while pattern.get(1) == Some(&b'*') {
          pattern = &pattern[1..];
        }
        if pattern.len() == 1 {
          return true;
        }
        return (0..=text.len()).any(|skip| match_bytes(&pattern[1..], &text[skip..]));
      }
      b'?' => {
        if text.is_empty() {
          return false;
        }
        text = &text[1..];
        pattern = &pattern[1..];
      }
      b'[' => {
        let Some(&c) = text.first() else {
          return false;
        };
        let (matched, rest) = match_class(&pattern[1..], c);
        if !matched {
          return false;
        }
        text = &text[1..];
        pattern = rest;
      }
      _ => {
        let (literal, rest) = if p == b'\\' && pattern.len() >= 2 {
          (pattern[1], &pattern[2..])
        } else {
          (p, &pattern[1..])
        };
        if text.first() != Some(&literal) {
          return false;
        }
        text = &text[1..];
        pattern = rest;
      }
    }
  }
  text.is_empty()
}

/// Matches `c` against a class body (after `[`); returns the result and the pattern
/// after the closing `]` (an unterminated class runs to the end, as in Redis).
fn match_class(mut pattern: &[u8], c: u8) -> (bool, &[u8]) {
  let negate = pattern.first() == Some(&b'^');
  if negate {
    pattern = &pattern[1..];
  }
  let mut matched = false;
  loop {
    match pattern {
      [] => break,
      [b']', rest @ ..] => {
        pattern = rest;
        break;
      }
      [b'\\', escaped, rest @ ..] => {
        matched |= *escaped == c;
        pattern = rest;
      }
      [start, b'-', end, rest @ ..] if *end != b']' => {
        let (low, high) = if start <= end {
          (*start, *end)
        } else {
          (*end, *start)
        };
        matched |= (low..=high).contains(&c);
        pattern = rest;
      }
      [literal, rest @ ..] => {
        matched |= *literal == c;
        pattern = rest;
      }
    }
  }
  (matched != negate, pattern)
}

#[cfg(test)]
mod tests {
  use super::*;

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
