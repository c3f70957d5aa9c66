//! DIMSE against a real `kuvasto serve`, driven by dcmtk (a peer nobody here wrote): C-ECHO,
//! the calling AE title check, and a peer sending garbage.

use crate::dicomweb::Server;
use std::io::Write;
use std::process::Command;

/// dcmtk's echoscu, if installed (`scripts/test.sh` installs Debian's dcmtk).
fn echoscu() -> Option<&'static str> {
    let path = "/usr/bin/echoscu";
    let found = std::path::Path::new(path).exists();
    if !found && std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_some() {
        panic!("KUVASTO_REQUIRE_SAMPLES is set but dcmtk's echoscu is not installed");
    }
    found.then_some(path)
}

fn dimse_address(server: &Server) -> (String, String) {
    let addr =
        std::fs::read_to_string(server.dir.path().join("dimse-addr")).expect("DIMSE address");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    (host.to_string(), port.to_string())
}

fn echo(echoscu: &str, server: &Server, calling: &str) -> bool {
    let (host, port) = dimse_address(server);
    Command::new(echoscu)
        .args(["-aet", calling, "-aec", "KUVASTO", &host, &port])
        .env("TCP_NODELAY", "1")
        .output()
        .expect("run echoscu")
        .status
        .success()
}

#[test]
fn echoscu_verifies_and_unknown_callers_are_rejected() {
    let Some(echoscu) = echoscu() else {
        eprintln!("skipped: dcmtk's echoscu is not installed");
        return;
    };
    let open = Server::start(&[]);
    assert!(echo(echoscu, &open, "ANYONE"), "C-ECHO with no allow-list");
    let guarded = Server::start(&["--dimse-calling-ae-titles", "MODALITY1,PACS2"]);
    assert!(echo(echoscu, &guarded, "MODALITY1"), "a listed caller");
    assert!(
        !echo(echoscu, &guarded, "STRANGER"),
        "an unlisted caller is rejected"
    );
}

#[test]
fn a_peer_sending_garbage_does_not_disturb_others() {
    let Some(echoscu) = echoscu() else {
        eprintln!("skipped: dcmtk's echoscu is not installed");
        return;
    };
    let server = Server::start(&[]);
    let (host, port) = dimse_address(&server);
    // Not a PDU at all, then a PDU header announcing 4 GB.
    for garbage in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1],
    ] {
        let mut stream = std::net::TcpStream::connect(format!("{host}:{port}")).unwrap();
        let _ = stream.write_all(&garbage);
        drop(stream);
    }
    // A peer that connects and says nothing, held open while another verifies.
    let _silent = std::net::TcpStream::connect(format!("{host}:{port}")).unwrap();
    assert!(echo(echoscu, &server, "AFTER"), "the server still answers");
}
