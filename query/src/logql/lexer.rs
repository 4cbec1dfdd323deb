//! LogQL lexer: turns query text into tokens with byte offsets.

/// Token kinds. Names follow Loki's grammar so error messages read the same.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// `{`
    OpenBrace,
    /// `}`
    CloseBrace,
    /// `(`
    OpenParen,
    /// `)`
    CloseParen,
    /// `[`
    OpenBracket,
    /// `]`
    CloseBracket,
    /// `,`
    Comma,
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `=~`
    Re,
    /// `!~`
    Nre,
    /// `|=`
    PipeExact,
    /// `|~`
    PipeMatch,
    /// `|`
    Pipe,
    /// `|>` (pattern line filter)
    PipePattern,
    /// `!>` (negated pattern line filter)
    NotPipePattern,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
    /// `==`
    CmpEq,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// A `--flag` (parser options such as `--strict`), without the dashes.
    Flag(String),
    /// An identifier such as a label name or function name.
    Ident(String),
    /// A string literal, already unescaped.
    Str(String),
    /// A number or a duration, as written.
    Number(String),
    /// End of input.
    Eof,
}

impl Tok {
    /// The token's name as Loki's parser reports it.
    pub fn describe(&self) -> String {
        match self {
            Tok::OpenBrace => "{".into(),
            Tok::CloseBrace => "}".into(),
            Tok::OpenParen => "(".into(),
            Tok::CloseParen => ")".into(),
            Tok::OpenBracket => "[".into(),
            Tok::CloseBracket => "]".into(),
            Tok::Comma => ",".into(),
            Tok::Eq => "=".into(),
            Tok::Neq => "!=".into(),
            Tok::Re => "=~".into(),
            Tok::Nre => "!~".into(),
            Tok::PipeExact => "|=".into(),
            Tok::PipeMatch => "|~".into(),
            Tok::Pipe => "|".into(),
            Tok::PipePattern => "|>".into(),
            Tok::NotPipePattern => "!>".into(),
            Tok::Add => "+".into(),
            Tok::Sub => "-".into(),
            Tok::Mul => "*".into(),
            Tok::Div => "/".into(),
            Tok::Mod => "%".into(),
            Tok::Pow => "^".into(),
            Tok::CmpEq => "==".into(),
            Tok::Gt => ">".into(),
            Tok::Gte => ">=".into(),
            Tok::Lt => "<".into(),
            Tok::Lte => "<=".into(),
            Tok::Flag(f) => format!("--{f}"),
            Tok::Ident(s) => format!("IDENTIFIER {s}"),
            Tok::Str(_) => "STRING".into(),
            Tok::Number(n) => format!("NUMBER {n}"),
            Tok::Eof => "end of input".into(),
        }
    }
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub pos: usize,
}

/// A lexing error at a byte offset.
#[derive(Debug, Clone, PartialEq)]
pub struct LexError {
    pub pos: usize,
    pub msg: String,
}

/// Splits `src` into tokens, ending with [`Tok::Eof`].
pub fn lex(src: &str) -> Result<Vec<Token>, LexError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let pos = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            // comment to end of line
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let two = b.get(i + 1).copied();
        let (tok, len) = match (c, two) {
            (b'!', Some(b'=')) => (Tok::Neq, 2),
            (b'!', Some(b'~')) => (Tok::Nre, 2),
            (b'=', Some(b'~')) => (Tok::Re, 2),
            (b'|', Some(b'=')) => (Tok::PipeExact, 2),
            (b'|', Some(b'~')) => (Tok::PipeMatch, 2),
            (b'|', Some(b'>')) => (Tok::PipePattern, 2),
            (b'!', Some(b'>')) => (Tok::NotPipePattern, 2),
            (b'|', _) => (Tok::Pipe, 1),
            (b'=', Some(b'=')) => (Tok::CmpEq, 2),
            (b'=', _) => (Tok::Eq, 1),
            (b'>', Some(b'=')) => (Tok::Gte, 2),
            (b'>', _) => (Tok::Gt, 1),
            (b'<', Some(b'=')) => (Tok::Lte, 2),
            (b'<', _) => (Tok::Lt, 1),
            (b'-', Some(b'-')) if b.get(i + 2).is_some_and(|c| c.is_ascii_alphabetic()) => {
                let start = i + 2;
                let mut j = start;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-' || b[j] == b'_') {
                    j += 1;
                }
                out.push(Token { tok: Tok::Flag(src[start..j].to_string()), pos });
                i = j;
                continue;
            }
            (b'+', _) => (Tok::Add, 1),
            (b'-', _) => (Tok::Sub, 1),
            (b'*', _) => (Tok::Mul, 1),
            (b'/', _) => (Tok::Div, 1),
            (b'%', _) => (Tok::Mod, 1),
            (b'^', _) => (Tok::Pow, 1),
            (b'{', _) => (Tok::OpenBrace, 1),
            (b'}', _) => (Tok::CloseBrace, 1),
            (b'(', _) => (Tok::OpenParen, 1),
            (b')', _) => (Tok::CloseParen, 1),
            (b'[', _) => (Tok::OpenBracket, 1),
            (b']', _) => (Tok::CloseBracket, 1),
            (b',', _) => (Tok::Comma, 1),
            (b'"', _) => {
                let (s, end) = lex_quoted(src, i)?;
                out.push(Token { tok: Tok::Str(s), pos });
                i = end;
                continue;
            }
            (b'`', _) => {
                let end = src[i + 1..].find('`').ok_or(LexError { pos, msg: "literal not terminated".into() })? + i + 1;
                out.push(Token { tok: Tok::Str(src[i + 1..end].to_string()), pos });
                i = end + 1;
                continue;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    i += 1;
                }
                out.push(Token { tok: Tok::Ident(src[start..i].to_string()), pos });
                continue;
            }
            _ if c.is_ascii_digit() => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                out.push(Token { tok: Tok::Number(src[start..i].to_string()), pos });
                continue;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(LexError { pos, msg: format!("unexpected character {ch:?}") });
            }
        };
        out.push(Token { tok, pos });
        i += len;
    }
    out.push(Token { tok: Tok::Eof, pos: b.len() });
    Ok(out)
}

/// Lexes a double-quoted string with Go escapes starting at `start`.
fn lex_quoted(src: &str, start: usize) -> Result<(String, usize), LexError> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    let err = |off: usize, msg: &str| LexError { pos: start + 1 + off, msg: msg.to_string() };
    while let Some((off, c)) = chars.next() {
        match c {
            '"' => return Ok((out, start + 1 + off + 1)),
            '\n' => return Err(err(off, "newline in string")),
            '\\' => {
                let (_, e) = chars.next().ok_or_else(|| err(off, "escape sequence not terminated"))?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v: u32 = 0;
                        for _ in 0..n {
                            let (_, h) = chars.next().ok_or_else(|| err(off, "escape sequence not terminated"))?;
                            v = v * 16 + h.to_digit(16).ok_or_else(|| err(off, "invalid hex digit in escape"))?;
                        }
                        out.push(char::from_u32(v).ok_or_else(|| err(off, "escape is not a valid code point"))?);
                    }
                    _ => return Err(err(off, "unknown escape sequence")),
                }
            }
            c => out.push(c),
        }
    }
    Err(LexError { pos: start, msg: "literal not terminated".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t: Vec<Tok> =
            lex(r#"{a="b\"c", d=~`x\d`} |= "e" != "f" |~ "g" !~ "h""#).unwrap().into_iter().map(|t| t.tok).collect();
        assert_eq!(
            t,
            vec![
                Tok::OpenBrace,
                Tok::Ident("a".into()),
                Tok::Eq,
                Tok::Str("b\"c".into()),
                Tok::Comma,
                Tok::Ident("d".into()),
                Tok::Re,
                Tok::Str("x\\d".into()),
                Tok::CloseBrace,
                Tok::PipeExact,
                Tok::Str("e".into()),
                Tok::Neq,
                Tok::Str("f".into()),
                Tok::PipeMatch,
                Tok::Str("g".into()),
                Tok::Nre,
                Tok::Str("h".into()),
                Tok::Eof
            ]
        );
        assert_eq!(lex(r#""\u00e9\x41""#).unwrap()[0].tok, Tok::Str("éA".into()));
    }

    #[test]
    fn errors() {
        for bad in ["\"abc", "`abc", "\"\\q\"", "\"\\u12\"", "{a=\"b\"} @"] {
            assert!(lex(bad).is_err(), "{bad}");
        }
    }
}
