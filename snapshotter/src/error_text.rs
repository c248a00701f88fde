//! An error and its causes as one line, for messages: libraries' own texts are often generic
//! ("transport error", "error sending request") and the cause that says what happened
//! (permission denied, connection refused) is further down the chain. Every crate of the house
//! says errors this one way.

use std::error::Error;

/// `e`'s text followed by each cause's that the text so far does not already hold,
/// `: `-separated ("a: b: c").
pub fn one_line(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Transport(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect: {0}")]
    struct Says(#[source] std::io::Error);

    #[test]
    fn causes_follow_unless_the_text_holds_them() {
        let e = Transport(std::io::Error::from_raw_os_error(13));
        assert_eq!(
            super::one_line(&e),
            "transport error: Permission denied (os error 13)"
        );
        let e = Says(std::io::Error::from_raw_os_error(2));
        assert_eq!(
            super::one_line(&e),
            "cannot connect: No such file or directory (os error 2)"
        );
    }
}
