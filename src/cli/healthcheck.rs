//! `cairn healthcheck`: asks a running registry's `GET /healthz` and exits 0
//! when it answers `200`, 1 otherwise. Container images of Cairn have no shell
//! and no curl, so their `HEALTHCHECK` runs the binary itself. A plain HTTP/1.1
//! request over a `TcpStream` with timeouts: no runtime, no TLS, nothing to
//! configure beyond the address.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The `/healthz` URL of a server listening on `listen`: an unspecified
/// address (`0.0.0.0`, `::`) is reached on loopback.
pub fn default_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

/// GETs `url` (an `http://` URL) and succeeds when the status is `200`.
/// `timeout` bounds the connection and each read and write.
pub fn check(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url)?;
    if parsed.scheme() != "http" {
        anyhow::bail!("{url}: only http:// URLs are supported");
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    let mut last_error = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        return Err(match last_error {
            Some(e) => anyhow::anyhow!("{url}: {e}"),
            None => anyhow::anyhow!("{url}: no address"),
        });
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let authority = match parsed.port() {
        Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or(host)),
        None => parsed.host_str().unwrap_or(host).to_string(),
    };
    // One write: `write!` on the socket itself would send each piece of the
    // format as a segment of its own.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: cairn-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    // The status line is all that matters; read until it is complete.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status_line = line.lines().next().unwrap_or("");
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        anyhow::bail!("{url}: {status_line:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(
            default_url("0.0.0.0:5000".parse().expect("addr")),
            "http://127.0.0.1:5000/healthz"
        );
        assert_eq!(
            default_url("[::]:5000".parse().expect("addr")),
            "http://[::1]:5000/healthz"
        );
        assert_eq!(
            default_url("10.1.2.3:8080".parse().expect("addr")),
            "http://10.1.2.3:8080/healthz"
        );
    }

    #[test]
    fn a_200_passes_and_anything_else_fails() {
        use std::net::TcpListener;
        let serve = |answer: &'static str| {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            std::thread::spawn(move || {
                if let Ok((mut s, _)) = l.accept() {
                    // The whole request, so closing does not reset the
                    // connection over unread bytes before the answer is read.
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(answer.as_bytes());
                }
            });
            format!("http://{addr}/healthz")
        };
        let t = Duration::from_secs(5);
        assert!(check(&serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), t).is_ok());
        assert!(check(&serve("HTTP/1.1 503 Service Unavailable\r\n\r\n"), t).is_err());
        // Nothing listening.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(check(&format!("http://{closed}/healthz"), t).is_err());
        assert!(check("https://127.0.0.1/healthz", t).is_err());
    }
}
