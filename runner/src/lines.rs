//! A step's output as lines, for both backends: whatever a step prints, at most [`MAX_LINE`] bytes
//! of one line are held at a time (a longer line is handed on in pieces), so a step that writes
//! 100 MB without a newline cannot make forge hold 100 MB.

use std::future::Future;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest piece of a line handed on at once.
pub const MAX_LINE: usize = 64 * 1024;

/// The shortest piece of a longer line: [`MAX_LINE`] bytes, less the start of a character the cut
/// would split (at most 3 bytes, which begin the next piece instead, so that no character is
/// decoded in two halves). Its text is at least as long (decoding replaces a bad byte with
/// three): what masks secrets in the output knows a shorter line is whole.
pub const MIN_PIECE: usize = MAX_LINE - 3;

/// Reads `r` to its end (or a read error: the writer is gone) and hands each line, without its
/// newline or a trailing carriage return, to `emit`; stops early when `emit` returns false.
pub(crate) async fn read_lines<R, F, Fut>(r: R, mut emit: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut reader = BufReader::new(r);
    let mut line: Vec<u8> = Vec::new();
    while let Ok(available) = reader.fill_buf().await {
        if available.is_empty() {
            break;
        }
        let room = MAX_LINE - line.len();
        let window = &available[..available.len().min(room)];
        let (consumed, ended, complete) = match window.iter().position(|b| *b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&window[..i]);
                (i + 1, true, true)
            }
            None => {
                line.extend_from_slice(window);
                (window.len(), false, line.len() >= MAX_LINE)
            }
        };
        reader.consume(consumed);
        if complete {
            // A cut piece ends at a character's end: the first bytes of one it would split
            // begin the next piece.
            let rest = if ended {
                Vec::new()
            } else {
                line.split_off(char_start_cut(&line))
            };
            let piece = take_line(&mut line, ended);
            line = rest;
            if !emit(piece).await {
                return;
            }
        }
    }
    if !line.is_empty() {
        emit(take_line(&mut line, true)).await;
    }
}

/// Where to cut `bytes` so that a UTF-8 character begun in its last 3 bytes and not finished is
/// left whole for what follows: the index of that character's first byte, else the end.
fn char_start_cut(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=3.min(len) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: the character began further back
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if width > back { len - back } else { len };
    }
    len
}

/// The text of `line`, without a carriage return that ends it when it `ended` (a piece of a
/// longer line keeps its bytes: they are the middle of a line, and a piece is [`MAX_LINE`]).
fn take_line(line: &mut Vec<u8>, ended: bool) -> String {
    if ended && line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(input, |l| {
            out.push(l);
            async { true }
        })
        .await;
        out
    }

    /// A long line is cut between characters, never inside one: each piece decodes whole, and
    /// the pieces joined are the line.
    #[tokio::test]
    async fn a_cut_never_splits_a_character() {
        for pad in 0..4 {
            let mut input = vec![b'a'; MAX_LINE - 2 + pad];
            input.extend_from_slice("päß€𝄞 end".as_bytes());
            input.push(b'\n');
            let pieces = collect(&input).await;
            assert!(pieces.len() >= 2, "{pad}");
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pad}");
            assert!(
                pieces[..pieces.len() - 1]
                    .iter()
                    .all(|p| p.len() >= MIN_PIECE)
            );
            assert_eq!(
                pieces.concat().as_bytes(),
                &input[..input.len() - 1],
                "{pad}"
            );
        }
        // Bytes that are no character are still cut at the limit.
        let pieces = collect(&vec![0xFF; MAX_LINE + 5]).await;
        assert_eq!(pieces.len(), 2);
    }

    #[tokio::test]
    async fn lines_split_on_newlines_and_lose_a_trailing_cr() {
        assert_eq!(collect(b"a\nb\r\n\nc").await, ["a", "b", "", "c"]);
        assert!(collect(b"").await.is_empty());
    }

    #[tokio::test]
    async fn a_line_longer_than_the_cap_comes_in_pieces_and_nothing_is_lost() {
        let mut input = vec![b'x'; 3 * MAX_LINE + 5];
        input.extend_from_slice(b"\nend\n");
        let out = collect(&input).await;
        let lens: Vec<usize> = out.iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, MAX_LINE, 5, 3]);
    }

    /// A carriage return is dropped only where a line ends: a piece that happens to end with one
    /// keeps it, and with it its length (see [`MAX_LINE`]).
    #[tokio::test]
    async fn a_piece_ending_in_a_carriage_return_keeps_it() {
        let mut input = vec![b'x'; MAX_LINE - 1];
        input.extend_from_slice(b"\rrest\r\n");
        let out = collect(&input).await;
        let lens: Vec<usize> = out.iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE, 4]);
        assert!(out[0].ends_with('\r'));
    }

    #[tokio::test]
    async fn emit_returning_false_stops_reading() {
        let mut seen = 0;
        read_lines(&b"a\nb\nc\n"[..], |_| {
            seen += 1;
            async { false }
        })
        .await;
        assert_eq!(seen, 1);
    }
}
