//! The commands a shell script runs, found by a small scanner of its text
//! (no expansion, no evaluation).
//!
//! Each simple command's words are returned with assignments, redirections
//! and leading keywords (`if`, `exec`, `!`, ...) removed. Command
//! substitutions (`$(...)`, backquotes) are scanned as commands too;
//! here-document bodies and comments are skipped. A word that needs
//! expansion (it holds `$`, `*`, ...) is kept as is; the caller skips it.
//! Malformed input yields fewer commands, never an error.

/// Most words kept per command.
const MAX_WORDS: usize = 16;

/// Words that start a command and are not the program.
const PREFIXES: &[&str] = &[
    "if", "then", "else", "elif", "do", "while", "until", "!", "{", "}", "exec", "command",
    "nohup", "time", "builtin", "fi", "done", "esac",
];

/// Shell builtins: they run no program (a file of the same name, such as
/// `/bin/echo`, is not opened).
pub const BUILTINS: &[&str] = &[
    "echo",
    "printf",
    "wait",
    "set",
    "unset",
    "export",
    "readonly",
    "local",
    "declare",
    "typeset",
    "cd",
    "pwd",
    "exit",
    "return",
    "shift",
    "read",
    "true",
    "false",
    "test",
    "[",
    "[[",
    "]]",
    ":",
    "trap",
    "eval",
    "ulimit",
    "umask",
    "kill",
    "fi",
    "done",
    "esac",
    "in",
    "break",
    "continue",
    "getopts",
    "hash",
    "type",
    "alias",
    "unalias",
    "let",
    "shopt",
    "source",
    ".",
    "jobs",
    "fg",
    "bg",
    "disown",
    "times",
    "mapfile",
    "readarray",
    "caller",
    "enable",
    "help",
    "history",
    "suspend",
    "logout",
    "dirs",
    "pushd",
    "popd",
    "complete",
    "compgen",
    "function",
    "select",
];

/// One command: its words, program first.
pub type Words = Vec<String>;

/// The commands `script` runs, in text order.
pub fn commands(script: &str) -> Vec<Words> {
    let mut s = Scanner {
        bytes: script.as_bytes(),
        i: 0,
        out: Vec::new(),
        words: Vec::new(),
        heredocs: Vec::new(),
    };
    s.run();
    s.out
}

struct Scanner<'a> {
    bytes: &'a [u8],
    i: usize,
    out: Vec<Words>,
    words: Words,
    /// Delimiters of here-documents whose bodies start at the next line.
    heredocs: Vec<String>,
}

impl Scanner<'_> {
    fn end_command(&mut self) {
        let words = std::mem::take(&mut self.words);
        let mut rest = words
            .into_iter()
            .skip_while(|w| PREFIXES.contains(&w.as_str()) || is_assignment(w))
            .peekable();
        match rest.peek().map(String::as_str) {
            None | Some("for" | "case" | "select" | "function") => {}
            Some(_) => self.out.push(rest.take(MAX_WORDS).collect()),
        }
    }

    fn run(&mut self) {
        while self.i < self.bytes.len() {
            let b = self.bytes[self.i];
            match b {
                b'\n' => {
                    self.i += 1;
                    self.end_command();
                    self.skip_heredocs();
                }
                b';' | b'&' | b'|' | b'(' | b')' | b'`' => {
                    self.i += 1;
                    self.end_command();
                }
                b' ' | b'\t' | b'\r' => self.i += 1,
                b'#' => self.skip_to_newline(),
                b'\\' if self.bytes.get(self.i + 1) == Some(&b'\n') => self.i += 2,
                b'<' | b'>' => self.redirection(),
                _ => {
                    let word = self.word();
                    if self.words.len() <= MAX_WORDS {
                        self.words.push(word);
                    }
                }
            }
        }
        self.end_command();
    }

    fn skip_to_newline(&mut self) {
        while self.i < self.bytes.len() && self.bytes[self.i] != b'\n' {
            self.i += 1;
        }
    }

    /// Skips a redirection operator and its target word (here-document
    /// delimiters are remembered).
    fn redirection(&mut self) {
        let heredoc =
            self.bytes[self.i..].starts_with(b"<<") && !self.bytes[self.i..].starts_with(b"<<<");
        while self.i < self.bytes.len() && matches!(self.bytes[self.i], b'<' | b'>' | b'&' | b'-') {
            self.i += 1;
        }
        while self.i < self.bytes.len() && matches!(self.bytes[self.i], b' ' | b'\t') {
            self.i += 1;
        }
        if self.i < self.bytes.len() && !matches!(self.bytes[self.i], b'\n' | b';' | b'|') {
            let target = self.word();
            if heredoc {
                self.heredocs.push(target);
            }
        }
        // A redirection such as `2>&1` left a file-descriptor number word.
        if self
            .words
            .last()
            .is_some_and(|w| w.bytes().all(|c| c.is_ascii_digit()))
        {
            self.words.pop();
        }
    }

    /// Skips the bodies of pending here-documents (their delimiter lines
    /// included).
    fn skip_heredocs(&mut self) {
        for delim in std::mem::take(&mut self.heredocs) {
            while self.i < self.bytes.len() {
                let start = self.i;
                self.skip_to_newline();
                let line = &self.bytes[start..self.i];
                self.i = (self.i + 1).min(self.bytes.len());
                if line.trim_ascii() == delim.as_bytes() {
                    break;
                }
            }
        }
    }

    /// One word, quotes removed (contents kept); stops at an operator.
    fn word(&mut self) -> String {
        let mut w = Vec::new();
        while self.i < self.bytes.len() {
            let b = self.bytes[self.i];
            match b {
                b' ' | b'\t' | b'\r' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>'
                | b'`' => break,
                b'$' if self.bytes.get(self.i + 1) == Some(&b'(') => {
                    // `$(`: the word holds an expansion; the substitution's
                    // commands are scanned on their own (`(` ends this one).
                    w.push(b'$');
                    self.i += 1;
                    break;
                }
                b'\'' | b'"' => {
                    self.i += 1;
                    while self.i < self.bytes.len() && self.bytes[self.i] != b {
                        if b == b'"' && self.bytes[self.i] == b'\\' {
                            self.i += 1;
                        }
                        if let Some(&c) = self.bytes.get(self.i) {
                            w.push(c);
                        }
                        self.i += 1;
                    }
                    self.i += 1;
                }
                b'\\' => {
                    if let Some(&c) = self.bytes.get(self.i + 1) {
                        w.push(c);
                    }
                    self.i += 2;
                }
                _ => {
                    w.push(b);
                    self.i += 1;
                }
            }
        }
        String::from_utf8_lossy(&w).into_owned()
    }
}

/// Whether `w` is a `NAME=value` assignment.
fn is_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                && !name.as_bytes()[0].is_ascii_digit()
        }
        None => false,
    }
}

/// Whether a word needs expansion (it cannot name a file as written).
pub fn needs_expansion(w: &str) -> bool {
    w.is_empty() || w.contains(['$', '*', '?', '[', '~', '{'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmds(s: &str) -> Vec<String> {
        commands(s).into_iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn commands_of_a_bench_like_entrypoint() {
        let s = "#!/bin/bash\n# comment: not run\nset -e\nexport APP_VERSION=v1\nredis-server /etc/redis/bench.conf &\nuntil redis-cli ping >/dev/null 2>&1; do sleep 0.05; done\necho READY\nwait\n";
        assert_eq!(
            cmds(s),
            vec![
                "set -e",
                "export APP_VERSION=v1",
                "redis-server /etc/redis/bench.conf",
                "redis-cli ping",
                "sleep 0.05",
                "echo READY",
                "wait",
            ]
        );
    }

    #[test]
    fn substitutions_quotes_heredocs_and_prefixes() {
        let s = "A=1 B=\"x y\" exec /usr/bin/app --flag \"quoted arg\" 'single'\nv=$(cat /etc/x | tr a b)\nif ! grep -q x /f; then nginx -g 'daemon off;'; fi\ncat <<EOF\nrm -rf /\nEOF\nfor i in 1 2; do true; done\n`date`\nls \\\n  -l\n";
        assert_eq!(
            cmds(s),
            vec![
                "/usr/bin/app --flag quoted arg single",
                "cat /etc/x",
                "tr a b",
                "grep -q x /f",
                "nginx -g daemon off;",
                "cat",
                "true",
                "date",
                "ls -l",
            ]
        );
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for s in [
            "", "'", "\"\\", "<<", "<<EOF", "$(", "a=", "=", "\\", ">>>", "a\u{0}b",
        ] {
            let _ = commands(s);
        }
        let long = "x ".repeat(100_000);
        assert_eq!(commands(&long)[0].len(), MAX_WORDS);
        assert!(needs_expansion("$PG/initdb"));
        assert!(!needs_expansion("/usr/bin/x"));
    }
}
