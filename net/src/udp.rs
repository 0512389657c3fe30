//! The UDP socket under every QUIC endpoint we bind (nodes, gateways,
//! clients), with its GSO batches kept within what the kernel sends.
//!
//! quinn hands the socket up to 10 datagrams at a time in one
//! segmentation-offload (GSO) send. With jumbo datagrams (8952 bytes) that
//! is 89,520 bytes, over the 64 KiB an IP packet (and so a GSO send) may
//! hold: the kernel refuses it with `EMSGSIZE`, which quinn-udp takes for an
//! MTU probe and drops without a word. Every full batch was lost; quinn's
//! black-hole detection then fell back to 1200-byte datagrams (seven times
//! as many per Sphinx packet) and re-probed, over and over (measured: 1.9
//! datagrams per packet instead of 0.3, and the node's QUIC CPU with it).

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Largest UDP payload one GSO send may carry in all: an IPv4 packet holds
/// at most 65,535 bytes, less 20 of IP header and 8 of UDP header.
const MAX_GSO_BYTES: usize = 65_535 - 20 - 8;

/// The UDP payload limit of an endpoint without jumbo datagrams: quinn's
/// default `max_udp_payload_size` (a 1500-byte Ethernet MTU less IP and
/// UDP headers).
pub(crate) const DEFAULT_UDP_PAYLOAD: usize = 1472;

/// Datagrams of up to `max_payload` bytes that fit in one GSO send.
pub(crate) fn max_segments(max_payload: usize) -> usize {
    (MAX_GSO_BYTES / max_payload.max(1)).max(1)
}

/// Caps the datagrams per send of `inner` at `max_segments`.
#[derive(Debug)]
pub(crate) struct GsoCapped {
    inner: Arc<dyn AsyncUdpSocket>,
    max_segments: usize,
}

impl GsoCapped {
    /// Wraps `inner` for datagrams of up to `max_payload` bytes.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, max_payload: usize) -> Self {
        Self {
            inner,
            max_segments: max_segments(max_payload),
        }
    }
}

impl AsyncUdpSocket for GsoCapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        self.inner.try_send(t)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.max_segments)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fit_in_one_ip_packet() {
        for payload in [
            usize::from(crate::tls::MAX_UDP_PAYLOAD),
            DEFAULT_UDP_PAYLOAD,
            1200,
            65_507,
        ] {
            let n = max_segments(payload);
            assert!(n * payload <= MAX_GSO_BYTES, "{n} × {payload}");
            assert!((n + 1) * payload > MAX_GSO_BYTES, "{n} × {payload}");
        }
        // Jumbo datagrams: 7 per send, not quinn's 10.
        assert_eq!(max_segments(usize::from(crate::tls::MAX_UDP_PAYLOAD)), 7);
        assert_eq!(max_segments(0), MAX_GSO_BYTES);
    }
}
