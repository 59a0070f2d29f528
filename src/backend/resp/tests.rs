//! The decoder against redis-rs's own parser: every reply kind, every split of the
//! stream, and generated streams (a deterministic PRNG, so a failure reproduces).

use bytes::BytesMut;
use redis::{parse_redis_value, Value};

use super::ReplyDecoder;

/// One reply of each RESP2 and RESP3 kind, nested ones included.
const SAMPLES: &[&[u8]] = &[
  b"+OK\r\n",
  b"+QUEUED\r\n",
  b"-ERR unknown command 'FOO'\r\n",
  b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
  b"-MOVED 3999 127.0.0.1:6381\r\n",
  b":0\r\n",
  b":-42\r\n",
  b"$5\r\nhello\r\n",
  b"$0\r\n\r\n",
  b"$4\r\na\r\nb\r\n",
  b"$-1\r\n",
  b"*-1\r\n",
  b"*0\r\n",
  b"*3\r\n:1\r\n$1\r\nx\r\n*2\r\n+a\r\n$-1\r\n",
  b"_\r\n",
  b",3.25\r\n",
  b"#t\r\n",
  b"#f\r\n",
  b"(3492890328409238509324850943850943825024385\r\n",
  b"=15\r\ntxt:Some string\r\n",
  b"!21\r\nSYNTAX invalid syntax\r\n",
  b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n*1\r\n:2\r\n",
  b"~2\r\n+a\r\n+b\r\n",
  b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nmsg\r\n",
  b">0\r\n",
  b"|1\r\n+ttl\r\n:3600\r\n$5\r\nvalue\r\n",
  b"*2\r\n%0\r\n~0\r\n",
];

fn expected(replies: &[&[u8]]) -> Vec<Value> {
  replies
    .iter()
    .map(|reply| parse_redis_value(reply).expect("a valid sample"))
    .collect()
}

/// Feeds `stream` in the given pieces and collects every reply decoded.
fn decode_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<Value> {
  let mut decoder = ReplyDecoder::default();
  let mut received = BytesMut::new();
  let mut values = Vec::new();
  let mut from = 0;
  for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
    received.extend_from_slice(&stream[from..to]);
    from = to;
    while let Some(value) = decoder.decode(&mut received).expect("a valid stream") {
      values.push(value);
    }
  }
  assert!(received.is_empty(), "bytes left over: {received:?}");
  values
}

#[test]
fn decodes_each_kind_as_redis_rs_does() {
  for sample in SAMPLES {
    assert_eq!(
      decode_in_pieces(sample, &[]),
      expected(&[sample]),
      "{sample:?}"
    );
  }
}

#[test]
fn decodes_a_stream_split_at_every_byte_boundary() {
  let stream = SAMPLES.concat();
  let want = expected(SAMPLES);
  for cut in 0..=stream.len() {
    assert_eq!(decode_in_pieces(&stream, &[cut]), want, "split at {cut}");
  }
  let every_byte: Vec<usize> = (1..stream.len()).collect();
  assert_eq!(decode_in_pieces(&stream, &every_byte), want);
}

#[test]
fn refuses_what_is_not_resp() {
  for bad in [
    &b"?what\r\n"[..],
    b"$abc\r\n",
    b"%-1\r\n",
    b"*1\r\n@\r\n",
    b"$-5\r\n",
    b"*-2\r\n",
  ] {
    let mut received = BytesMut::from(bad);
    assert!(
      ReplyDecoder::default().decode(&mut received).is_err(),
      "{bad:?}"
    );
  }
  // A bulk string whose payload is not followed by CRLF: redis-rs's parser says so.
  let mut received = BytesMut::from(&b"$2\r\nabXY"[..]);
  assert!(ReplyDecoder::default().decode(&mut received).is_err());
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
  fn next(&mut self) -> u64 {
    self.0 ^= self.0 >> 12;
    self.0 ^= self.0 << 25;
    self.0 ^= self.0 >> 27;
    self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
  }

  fn below(&mut self, n: u64) -> u64 {
    self.next() % n
  }

  fn bytes(&mut self, alphabet: &[u8], max: u64) -> Vec<u8> {
    let len = self.below(max + 1);
    (0..len)
      .map(|_| alphabet[self.below(alphabet.len() as u64) as usize])
      .collect()
  }
}

const TEXT: &[u8] = b"abcXYZ019 _-:.";
const BINARY: &[u8] = b"ab\r\n\0\xff$*:+-";

/// A random well-formed reply that is not an aggregate.
fn leaf(rng: &mut Rng) -> Vec<u8> {
  let mut out = Vec::new();
  match rng.below(11) {
    0 => out.extend(b"+OK\r\n"),
    1 => out.extend([&b"+"[..], &rng.bytes(TEXT, 12), b"\r\n"].concat()),
    2 => out.extend(format!(":{}\r\n", rng.next() as i64).as_bytes()),
    3 => {
      let payload = rng.bytes(BINARY, 40);
      out.extend(format!("${}\r\n", payload.len()).as_bytes());
      out.extend(payload);
      out.extend(b"\r\n");
    }
    4 => out.extend([&b"$-1\r\n"[..], b"*-1\r\n", b"_\r\n"][rng.below(3) as usize]),
    5 => out.extend(format!("-ERR {}\r\n", rng.below(1000)).as_bytes()),
    6 => out.extend(format!(",{}\r\n", rng.below(1_000_000) as f64 / 8.0).as_bytes()),
    7 => out.extend(if rng.below(2) == 0 {
      &b"#t\r\n"[..]
    } else {
      b"#f\r\n"
    }),
    8 => {
      let text = [&b"txt:"[..], &rng.bytes(TEXT, 20)].concat();
      out.extend(format!("={}\r\n", text.len()).as_bytes());
      out.extend(text);
      out.extend(b"\r\n");
    }
    9 => out.extend(format!("({}{}\r\n", rng.next(), rng.next()).as_bytes()),
    _ => out.extend(b"-WRONGTYPE Operation against a key\r\n"),
  }
  out
}

/// A random well-formed reply, nested up to `depth` levels.
fn reply(rng: &mut Rng, depth: u32) -> Vec<u8> {
  if depth == 0 || rng.below(3) > 0 {
    return leaf(rng);
  }
  let mut out = Vec::new();
  let count = rng.below(5);
  let kind = [b'*', b'~', b'%', b'>', b'|'][rng.below(5) as usize];
  out.extend(format!("{}{count}\r\n", kind as char).as_bytes());
  let elements = match kind {
    b'%' => count * 2,
    b'|' => count * 2 + 1,
    _ => count,
  };
  for index in 0..elements {
    if kind == b'>' && index == 0 {
      out.extend(b"$7\r\nmessage\r\n");
    } else {
      out.extend(reply(rng, depth - 1));
    }
  }
  out
}

#[test]
fn decodes_generated_streams_in_random_pieces_as_redis_rs_does() {
  let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
  for _ in 0..300 {
    let replies: Vec<Vec<u8>> = (0..1 + rng.below(6)).map(|_| reply(&mut rng, 4)).collect();
    let stream = replies.concat();
    let mut cuts: Vec<usize> = (0..rng.below(8))
      .map(|_| rng.below(stream.len() as u64 + 1) as usize)
      .collect();
    cuts.sort_unstable();
    let refs: Vec<&[u8]> = replies.iter().map(Vec::as_slice).collect();
    assert_eq!(
      decode_in_pieces(&stream, &cuts),
      expected(&refs),
      "{stream:?} {cuts:?}"
    );
  }
}

#[test]
fn never_panics_or_loops_on_garbage() {
  let mut rng = Rng(42);
  let alphabet = b"*$%~>|+-:_,#!=(\r\n0123-9ab";
  for _ in 0..2000 {
    let mut received = BytesMut::from(&rng.bytes(alphabet, 30)[..]);
    let mut decoder = ReplyDecoder::default();
    let before = received.len();
    while let Ok(Some(_)) = decoder.decode(&mut received) {
      assert!(received.len() < before, "a reply must consume bytes");
    }
  }
}
