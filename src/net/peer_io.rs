//! Socket operations for peer connections on a shard's runtime, for both I/O
//! drivers ([`IoDriver`]).
//!
//! Layer: driver. The only place peer sockets are read or written. Buffers are
//! owned: each call hands a `Vec<u8>` to the kernel (io_uring) or fills it in
//! place (epoll) and always gives it back, so the caller can return it to its
//! shard's pool. Both drivers offer the same calls with the same meaning.
//!
//! Reads go into the *spare capacity* of the caller's buffer, after the bytes
//! not yet parsed, so one large read can carry many messages and a message cut
//! by a read boundary needs no copy until the buffer is compacted.
//!
//! Never wrap a read in a timeout on a connection that is kept: tokio-uring
//! leaves the read in flight when the timeout future is dropped, and it then
//! swallows the next bytes. To stop a stuck read, shut the socket down (both
//! drivers then end the read with end of stream).

use super::udp::UtpStream;
use crate::shard::driver::IoDriver;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_uring::buf::BoundedBuf;

/// A peer socket on this shard, on the shard's driver, or a uTP connection
/// of the UDP driver (the same calls on either).
pub enum PeerStream {
    Uring(tokio_uring::net::TcpStream),
    Epoll(tokio::net::TcpStream),
    Utp(UtpStream),
}

/// A connection the listener or the UDP driver accepted, for a shard.
#[derive(Debug)]
pub enum IncomingStream {
    /// Blocking-mode std socket, ready for adoption by a shard's driver.
    Tcp(std::net::TcpStream),
    /// Boxed: a stream is larger than a socket, and this travels in the
    /// shards' command queues.
    Utp(Box<UtpStream>),
}

/// Connects to `addr` on `driver`, giving up after `timeout`. The connect
/// runs on a non-blocking socket watched by the runtime's reactor (both
/// drivers run on a tokio runtime with its I/O driver), not as an io_uring
/// op: a dropped io_uring connect keeps its socket open until the kernel
/// gives up on the SYN (about two minutes), so thousands of unreachable peers
/// would pile up fds. Here a timed-out connect closes its socket at once. The
/// connected socket then moves to the shard's driver; no byte was exchanged
/// before that.
pub async fn connect(
    driver: IoDriver,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<PeerStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // On timeout the future, and the socket it owns, is dropped: closed now.
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => match driver {
            IoDriver::Uring => {
                let stream = stream.into_std()?;
                // io_uring reads and writes expect a blocking-mode socket.
                stream.set_nonblocking(false)?;
                adopt_tcp(driver, stream)
            }
            IoDriver::Epoll => {
                stream.set_nodelay(true)?;
                Ok(PeerStream::Epoll(stream))
            }
        },
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Open file descriptors of this process (from `/proc/self/fd`), for tests
/// and metrics; `None` where that directory cannot be read.
pub fn open_fds() -> Option<usize> {
    // One of the entries is the directory handle of the read itself.
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1))
}

/// Adopts an accepted connection (from the listener or the UDP driver)
/// into this shard's driver.
pub fn adopt(driver: IoDriver, stream: IncomingStream) -> io::Result<PeerStream> {
    match stream {
        IncomingStream::Tcp(stream) => adopt_tcp(driver, stream),
        IncomingStream::Utp(stream) => Ok(PeerStream::Utp(*stream)),
    }
}

/// Adopts a connected std socket into this shard's driver.
pub fn adopt_tcp(driver: IoDriver, stream: std::net::TcpStream) -> io::Result<PeerStream> {
    stream.set_nodelay(true)?;
    Ok(match driver {
        IoDriver::Uring => PeerStream::Uring(tokio_uring::net::TcpStream::from_std(stream)),
        IoDriver::Epoll => {
            stream.set_nonblocking(true)?;
            PeerStream::Epoll(tokio::net::TcpStream::from_std(stream)?)
        }
    })
}

/// Reads once into the spare capacity of `buf` (its length grows by the bytes
/// read). Returns 0 at end of stream. `buf` must have spare capacity.
pub async fn read_into_spare(
    stream: &PeerStream,
    mut buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    debug_assert!(buf.len() < buf.capacity(), "read needs spare capacity");
    match stream {
        PeerStream::Uring(s) => {
            let start = buf.len();
            let end = buf.capacity();
            let (result, slice) = s.read(buf.slice(start..end)).await;
            (result, slice.into_inner())
        }
        PeerStream::Epoll(s) => loop {
            if let Err(e) = s.readable().await {
                return (Err(e), buf);
            }
            // `try_read_buf` fills the spare capacity of a Vec that has some
            // (it never grows one that has spare room).
            match s.try_read_buf(&mut buf) {
                Ok(n) => return (Ok(n), buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return (Err(e), buf),
            }
        },
        PeerStream::Utp(s) => {
            let result = s.read_into_spare(&mut buf).await;
            (result, buf)
        }
    }
}

/// Writes all of `buf`.
pub async fn write_all(stream: &PeerStream, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    if buf.is_empty() {
        return (Ok(()), buf);
    }
    match stream {
        PeerStream::Uring(s) => s.write_all(buf).await,
        PeerStream::Epoll(s) => {
            let mut written = 0;
            while written < buf.len() {
                if let Err(e) = s.writable().await {
                    return (Err(e), buf);
                }
                match s.try_write(&buf[written..]) {
                    Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return (Err(e), buf),
                }
            }
            (Ok(()), buf)
        }
        PeerStream::Utp(s) => {
            let result = s.write_all(&buf).await;
            (result, buf)
        }
    }
}

/// Shuts both directions down: a read in flight returns 0, so the reader task
/// ends without a timeout on the read itself.
pub fn shutdown(stream: &PeerStream) {
    let _ = match stream {
        PeerStream::Uring(s) => s.shutdown(std::net::Shutdown::Both),
        PeerStream::Epoll(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Both),
        PeerStream::Utp(s) => {
            s.shutdown();
            Ok(())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::driver;
    use std::io::{Read, Write};

    fn reads_append_after_unparsed_bytes_and_shutdown_ends_a_read(io_driver: IoDriver) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hello").unwrap();
            s.write_all(b" world").unwrap();
            let mut got = [0u8; 4];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"pong");
            // Keep the socket open: the client ends its read by shutdown.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        driver::block_on(io_driver, async move {
            let stream = connect(io_driver, addr, Duration::from_secs(5)).await.unwrap();
            let mut buf = Vec::with_capacity(64);
            while buf.len() < 11 {
                let (n, b) = read_into_spare(&stream, buf).await;
                assert!(n.unwrap() > 0);
                buf = b;
            }
            assert_eq!(&buf, b"hello world");
            assert_eq!(buf.capacity(), 64, "reads never grow the buffer");
            let (r, _) = write_all(&stream, b"pong".to_vec()).await;
            r.unwrap();
            let stream = std::rc::Rc::new(stream);
            let reader = stream.clone();
            let pending = driver::spawn(async move {
                let (n, _) = read_into_spare(&reader, Vec::with_capacity(16)).await;
                n
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            shutdown(&stream);
            let n = tokio::time::timeout(Duration::from_secs(5), pending).await.unwrap().unwrap();
            assert_eq!(n.unwrap(), 0, "shutdown ends the read with end of stream");
        })
        .unwrap();
        server.join().unwrap();
    }

    /// Goal: a connect that times out releases its fd at once (a dropped
    /// io_uring connect kept it until the kernel's SYN timeout).
    /// Setup: a listener with a backlog of 1 that never accepts, filled so
    /// that further SYNs are dropped by the kernel (loopback only); then 40
    /// connects with a 50 ms timeout.
    /// Check: every one times out, and the process's open fds return to the
    /// count before them.
    #[test]
    fn a_timed_out_connect_closes_its_socket() {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // Fill the accept queue (backlog 0 holds one; later SYNs are dropped).
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            fillers.push(s);
        }
        std::thread::sleep(Duration::from_millis(200));
        // Sockets of this network namespace still trying to reach `addr`
        // (SYN_SENT); other tests in this process never dial this port, so
        // unlike a count of our fds this is not disturbed by them.
        let syn_sent = move || {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            let remote = format!("0100007F:{:04X}", addr.port());
            table.lines().filter(|l| l.contains(&remote) && l.contains(" 02 ")).count()
        };
        driver::block_on(IoDriver::Uring, async move {
            let before = syn_sent();
            let mut timed_out = 0;
            for _ in 0..40 {
                match connect(IoDriver::Uring, addr, Duration::from_millis(50)).await {
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => timed_out += 1,
                    Err(_) => {}
                    Ok(s) => drop(s),
                }
            }
            assert!(timed_out >= 30, "connects must hang for the test to mean anything");
            let after = syn_sent();
            assert!(after <= before, "sockets left open: {before} before, {after} after");
        })
        .unwrap();
        drop(fillers);
    }

    #[test]
    fn uring_reads_append_after_unparsed_bytes_and_shutdown_ends_a_read() {
        reads_append_after_unparsed_bytes_and_shutdown_ends_a_read(IoDriver::Uring);
    }

    #[test]
    fn epoll_reads_append_after_unparsed_bytes_and_shutdown_ends_a_read() {
        reads_append_after_unparsed_bytes_and_shutdown_ends_a_read(IoDriver::Epoll);
    }

    #[test]
    fn epoll_adopts_a_listener_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"ping").unwrap();
        });
        let (accepted, _) = listener.accept().unwrap();
        driver::block_on(IoDriver::Epoll, async move {
            let stream = adopt_tcp(IoDriver::Epoll, accepted).unwrap();
            let mut buf = Vec::with_capacity(16);
            while buf.len() < 4 {
                let (n, b) = read_into_spare(&stream, buf).await;
                assert!(n.unwrap() > 0);
                buf = b;
            }
            assert_eq!(&buf, b"ping");
        })
        .unwrap();
        client.join().unwrap();
    }
}
