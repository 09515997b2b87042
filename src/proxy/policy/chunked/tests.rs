use super::*;

/// A scanner for a message that declared `x-sum`, `y`, `t`, `x-ok`,
/// `content-length` and `host` as trailers (the last two are dropped
/// anyway).
fn declaring() -> ChunkedScanner {
    ChunkedScanner::with_trailers(
        ["x-sum", "y", "t", "x-ok", "content-length", "host"]
            .iter()
            .map(|n| n.as_bytes().to_vec())
            .filter(|n| crate::proxy::policy::fields::trailer_allowed(n))
            .collect(),
    )
}

/// The whole body at once: (bytes passed, end, kept trailers).
fn scan(body: &[u8]) -> Result<(usize, Option<usize>, String), ChunkError> {
    let mut s = declaring();
    let r = s.feed(body)?;
    let end = r.done.then_some(r.consumed);
    Ok((
        r.pass,
        end,
        String::from_utf8_lossy(s.trailers()).into_owned(),
    ))
}

fn end_of(body: &[u8]) -> Result<Option<usize>, ChunkError> {
    scan(body).map(|(_, end, _)| end)
}

#[test]
fn finds_the_end_of_whole_bodies() {
    let body = b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    assert_eq!(scan(body), Ok((13, Some(15), String::new())));
    let ext = b"5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n";
    assert_eq!(end_of(ext), Ok(Some(ext.len())));
    let trailers = b"3\r\nabc\r\n0\r\nx-sum: 1\r\ny:2\r\n\r\nrest";
    assert_eq!(
        scan(trailers),
        Ok((
            11,
            Some(trailers.len() - 4),
            "x-sum: 1\r\ny: 2\r\n".to_owned()
        ))
    );
}

#[test]
fn any_split_gives_the_same_result() {
    let body = b"1a;a=\"q\\\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nt: v\r\nHost: h\r\n\r\nNEXT";
    let end = body.len() - 4;
    for split in 0..body.len() {
        let mut s = declaring();
        let first = s.feed(&body[..split]).unwrap();
        let (passed, total) = if first.done {
            (first.pass, first.consumed)
        } else {
            assert_eq!(first.consumed, split);
            let second = s.feed(&body[split..]).unwrap();
            assert!(second.done);
            (
                if first.pass == split {
                    split + second.pass
                } else {
                    first.pass
                },
                split + second.consumed,
            )
        };
        assert_eq!(total, end, "split at {split}");
        assert_eq!(
            &body[..passed],
            b"1a;a=\"q\\\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n"
        );
        assert_eq!(s.trailers(), b"t: v\r\n", "Host is dropped from trailers");
        assert!(s.is_done());
    }
}

#[test]
fn incomplete_bodies_want_more() {
    for part in [&b"5\r\nhel"[..], b"0\r\n", b"0\r\n\r", b"0\r\nx: y\r\n"] {
        let r = ChunkedScanner::default().feed(part).unwrap();
        assert!(!r.done, "{part:?}");
        assert_eq!(r.consumed, part.len());
    }
}

#[test]
fn accepts_extension_grammar() {
    for ok in [
        &b"5;a=b\r\nhello\r\n0;x\r\n\r\n"[..],
        b"5 ; a\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"x; y z\"\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5\t\r\nhello\r\n0\r\n\r\n",
        b"5;a = b ;c\r\nhello\r\n0\r\n\r\n",
        b"A\r\n0123456789\r\n0\r\n\r\n",
    ] {
        assert!(
            matches!(end_of(ok), Ok(Some(_))),
            "{:?}",
            String::from_utf8_lossy(ok)
        );
    }
}

#[test]
fn rejects_what_parsers_could_read_differently() {
    let long_ext = [&b"5;"[..], &[b'a'; 5000], b"\r\nhello\r\n0\r\n\r\n"].concat();
    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"-5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b" 5\r\nhello\r\n",
        b"5 6\r\nhello\r\n",
        b"5\nhello",
        b"5\r\r\nhello",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"10000000000000005\r\n",
        b"ffffffffffffffff0\r\n",
        b"5;a\nb\r\n",
        b"5;\x00\r\nhello\r\n",
        b"5;a\rb\r\n",
        b"5;\r\nhello\r\n",
        b"5;a=\"x\r\n",
        b"5;a=b c\r\n",
        b"0\r\n\nGET /smuggled HTTP/1.1\r\nHost: b\r\n\r\n",
        b"0\r\nX: a\n\nGET /smuggled HTTP/1.1\r\n\r\n",
        b"0\r\nX: a\nY: b\r\n\r\n",
        b"0\r\nX: a\rb\r\n\r\n",
        b"0\r\nnot a field\r\n\r\n",
        b"0\r\nX: a\r\n b\r\n\r\n",
        b"0\r\nX: a\x00b\r\n\r\n",
        b"0\r\nX : a\r\n\r\n",
        b"0\r\n\r\x00",
        &long_ext,
    ] {
        assert!(end_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn drops_forbidden_and_undeclared_trailer_fields() {
    let body = b"5\r\nhello\r\n0\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nTrailer: x\r\nX-Sum: 1\r\nX-Undeclared: 2\r\n\r\n";
    assert_eq!(scan(body).unwrap().2, "X-Sum: 1\r\n");
    let mut none = ChunkedScanner::default();
    assert!(none.feed(body).unwrap().done);
    assert_eq!(none.trailers(), b"", "nothing declared: no trailers");
}

#[test]
fn leading_zeros_in_sizes_are_fine() {
    assert_eq!(
        end_of(b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
        Ok(Some(31))
    );
}

#[test]
fn rechunk_writes_plain_sizes_without_extensions() {
    let body = b"00000000000000005;a=\"x; y\"\r\nhello\r\nA ; q\r\n0123456789\r\n0;last\r\nx-sum: 1\r\nHost: h\r\n\r\nNEXT";
    let mut s = declaring();
    let scan = s.feed(body).unwrap();
    assert!(scan.done);
    let mut out = Vec::new();
    rechunk(&body[..scan.consumed], s.trailers(), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "5\r\nhello\r\na\r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n"
    );
}

#[test]
fn bounds_the_trailer_section() {
    let mut many = b"0\r\n".to_vec();
    for i in 0..65 {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(end_of(&many), Err(ChunkError("too many trailer lines")));
    let big = [&b"0\r\nx: "[..], &[b'v'; 17 * 1024], b"\r\n\r\n"].concat();
    assert_eq!(end_of(&big), Err(ChunkError("trailer section too large")));
}

#[test]
fn feed_data_finds_the_chunk_data_in_any_split() {
    let body = b"5;x=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nt: v\r\n\r\nNEXT";
    for split in 0..body.len() {
        let mut s = declaring();
        let mut data = Vec::new();
        let mut at = 0;
        let mut ended = None;
        for piece in [&body[..split], &body[split..]] {
            if ended.is_some() {
                break;
            }
            let r = s
                .feed_data(piece, |a, b| data.extend_from_slice(&piece[a..b]))
                .unwrap();
            if r.done {
                ended = Some(at + r.consumed);
            }
            at += piece.len();
        }
        assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "split at {split}");
        assert_eq!(ended, Some(body.len() - 4), "split at {split}");
        assert_eq!(s.trailers(), b"t: v\r\n");
    }
}
