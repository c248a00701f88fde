//! A step's output as lines, for both backends: whatever a step prints, at most [`MAX_LINE`] bytes
//! of one line are held at a time (a longer line is handed on in pieces), so a step that writes
//! 100 MB without a newline cannot make forge hold 100 MB.

use std::future::Future;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest piece of a line handed on at once. A piece of a longer line is exactly this many
/// bytes, so its text is at least as long (decoding replaces a bad byte with three): what masks
/// secrets in the output knows a shorter line is whole.
pub const MAX_LINE: usize = 64 * 1024;

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
        if complete && !emit(take_line(&mut line, ended)).await {
            return;
        }
    }
    if !line.is_empty() {
        emit(take_line(&mut line, true)).await;
    }
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
