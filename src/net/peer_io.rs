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

use crate::shard::driver::IoDriver;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_uring::buf::BoundedBuf;

/// A peer socket on this shard, on the shard's driver.
pub enum PeerStream {
    Uring(tokio_uring::net::TcpStream),
    Epoll(tokio::net::TcpStream),
}

/// Connects to `addr` on `driver`, giving up after `timeout`. A timed-out
/// connect is dropped before any byte is exchanged, so no read is left behind.
pub async fn connect(
    driver: IoDriver,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<PeerStream> {
    let connecting = async {
        Ok(match driver {
            IoDriver::Uring => PeerStream::Uring(tokio_uring::net::TcpStream::connect(addr).await?),
            IoDriver::Epoll => PeerStream::Epoll(tokio::net::TcpStream::connect(addr).await?),
        })
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => {
            stream.set_nodelay()?;
            Ok(stream)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Adopts a connected std socket (from the listener) into this shard's
/// driver.
pub fn adopt(driver: IoDriver, stream: std::net::TcpStream) -> io::Result<PeerStream> {
    stream.set_nodelay(true)?;
    Ok(match driver {
        IoDriver::Uring => PeerStream::Uring(tokio_uring::net::TcpStream::from_std(stream)),
        IoDriver::Epoll => {
            stream.set_nonblocking(true)?;
            PeerStream::Epoll(tokio::net::TcpStream::from_std(stream)?)
        }
    })
}

impl PeerStream {
    fn set_nodelay(&self) -> io::Result<()> {
        match self {
            PeerStream::Uring(s) => s.set_nodelay(true),
            PeerStream::Epoll(s) => s.set_nodelay(true),
        }
    }
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
    }
}

/// Shuts both directions down: a read in flight returns 0, so the reader task
/// ends without a timeout on the read itself.
pub fn shutdown(stream: &PeerStream) {
    let _ = match stream {
        PeerStream::Uring(s) => s.shutdown(std::net::Shutdown::Both),
        PeerStream::Epoll(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Both),
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
            let stream = adopt(IoDriver::Epoll, accepted).unwrap();
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
