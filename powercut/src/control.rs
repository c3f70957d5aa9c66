//! The control channel: a Unix socket outside the mount, one command per line, one reply
//! line per command.
//!
//! | command | reply |
//! |---|---|
//! | `cut SEED [random\|lose\|keep]` | `ok ` + [`CutReport`] as `key=value` pairs |
//! | `stats` | `ok ` + [`Stats`] as `key=value` pairs |
//! | `quit` | `ok`, then the server unmounts and exits |
//!
//! A refused or malformed command gets `err MESSAGE`.

use crate::error::{Error, Result};
use crate::model::{CutPolicy, CutReport, Stats};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Longest a reply may take (a cut unmounts, which waits for the kernel to let go).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// One command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Cut { seed: u64, policy: CutPolicy },
    Stats,
    Quit,
}

impl FromStr for Command {
    type Err = String;
    fn from_str(line: &str) -> std::result::Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["cut", seed] | ["cut", seed, _] => {
                let seed = seed
                    .parse()
                    .map_err(|_| format!("cut: not a seed: {seed:?}"))?;
                let policy = match words.get(2) {
                    Some(p) => p.parse()?,
                    None => CutPolicy::Random,
                };
                Ok(Command::Cut { seed, policy })
            }
            ["stats"] => Ok(Command::Stats),
            ["quit"] => Ok(Command::Quit),
            _ => Err(format!(
                "unknown command {line:?} (cut SEED [POLICY], stats, quit)"
            )),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Cut { seed, policy } => write!(f, "cut {seed} {policy}"),
            Command::Stats => f.write_str("stats"),
            Command::Quit => f.write_str("quit"),
        }
    }
}

/// A connection to a running server.
pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the server listening on `socket`.
    pub fn connect(socket: &Path) -> Result<Client> {
        let stream = UnixStream::connect(socket)
            .map_err(Error::io(format!("connect to {}", socket.display())))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(Error::io("set control read timeout"))?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// Connects, retrying until `timeout` while the server is starting (it listens only
    /// once the file system is mounted).
    pub fn connect_retrying(socket: &Path, timeout: Duration) -> Result<Client> {
        let deadline = Instant::now() + timeout;
        loop {
            match Client::connect(socket) {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn call(&mut self, command: Command) -> Result<String> {
        let stream = self.reader.get_mut();
        writeln!(stream, "{command}").map_err(Error::io("send control command"))?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(Error::io("read control reply"))?;
        if n == 0 {
            return Err(Error::Protocol(format!(
                "connection closed before the reply to {command}"
            )));
        }
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("ok") {
            Ok(rest.trim().to_string())
        } else if let Some(message) = line.strip_prefix("err ") {
            Err(Error::Refused(message.to_string()))
        } else {
            Err(Error::Protocol(format!("unexpected reply {line:?}")))
        }
    }

    /// Cuts power: see [`crate::model::Model::cut`]. Returns once the file system is
    /// mounted again.
    pub fn cut(&mut self, seed: u64, policy: CutPolicy) -> Result<CutReport> {
        self.call(Command::Cut { seed, policy })?
            .parse()
            .map_err(Error::Protocol)
    }

    /// The server's counters and what is pending now.
    pub fn stats(&mut self) -> Result<Stats> {
        self.call(Command::Stats)?.parse().map_err(Error::Protocol)
    }

    /// Asks the server to unmount and exit.
    pub fn quit(&mut self) -> Result<()> {
        self.call(Command::Quit).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_print() {
        for line in [
            "cut 7 random",
            "cut 0 lose",
            "cut 18446744073709551615 keep",
            "stats",
            "quit",
        ] {
            let command: Command = line.parse().unwrap();
            assert_eq!(command.to_string(), line);
        }
        assert_eq!(
            "cut 5".parse::<Command>(),
            Ok(Command::Cut {
                seed: 5,
                policy: CutPolicy::Random
            })
        );
        assert!("cut".parse::<Command>().is_err());
        assert!("cut x".parse::<Command>().is_err());
        assert!("cut 1 maybe".parse::<Command>().is_err());
        assert!("reboot".parse::<Command>().is_err());
    }
}
