//! Just enough of a POP3 client for the end-to-end tests: connect, log in
//! as the shared test user, send commands and read (multi-line) answers.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::ALICE_PASSWORD;

pub struct Pop3 {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Pop3 {
    pub fn connect(addr: SocketAddr) -> Pop3 {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut pop = Pop3 {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        assert!(pop.line().starts_with("+OK"));
        pop
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    pub fn cmd(&mut self, command: &str) -> String {
        self.writer
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        self.line()
    }

    /// A multi-line answer's lines, dot-unstuffed, without the terminator.
    pub fn multi(&mut self, command: &str) -> Vec<String> {
        let first = self.cmd(command);
        assert!(first.starts_with("+OK"), "{command}: {first}");
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            if line == "." {
                return lines;
            }
            lines.push(line.strip_prefix('.').map(str::to_string).unwrap_or(line));
        }
    }

    pub fn login(addr: SocketAddr) -> Pop3 {
        let mut pop = Pop3::connect(addr);
        assert!(pop.cmd("USER alice@local.test").starts_with("+OK"));
        let pass = pop.cmd(&format!("PASS {ALICE_PASSWORD}"));
        assert!(pass.starts_with("+OK"), "{pass}");
        pop
    }
}
