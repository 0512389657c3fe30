//! Criterion benches of the hot paths: packet creation for a 4-hop route,
//! one-hop unwrap (ours beside sphinx-packet's own), replay-cache insert and
//! lookup, the frame codec. `cargo bench -p protocol`.

use criterion::{Criterion, criterion_group, criterion_main};
use protocol::frame::{self, FrameKind};
use protocol::packet::{Hop, build_packet, peel, sphinx_keypair};
use protocol::replay::ReplayCache;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::hint::black_box;
use std::time::Duration;

fn setup() -> (Vec<Hop>, Vec<x25519_dalek::StaticSecret>, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut hops = vec![];
    let mut secrets = vec![];
    for i in 0..4u8 {
        let (s, p) = sphinx_keypair(&mut rng);
        hops.push(Hop {
            id: [i + 1; 32],
            sphinx_key: p,
        });
        secrets.push(s);
    }
    (hops, secrets, rng)
}

fn benches(c: &mut Criterion) {
    let (hops, secrets, mut rng) = setup();
    let delays = [Duration::from_millis(10); 4];
    let msg = vec![7u8; 2000];
    c.bench_function("create 4-hop packet, 2000-byte message", |b| {
        b.iter(|| {
            build_packet(&mut rng, &hops, &[0; 32], [0; 16], &delays, black_box(&msg)).unwrap()
        })
    });
    let pkt = build_packet(&mut rng, &hops, &[0; 32], [0; 16], &delays, &msg).unwrap();
    c.bench_function("unwrap one hop (protocol::packet::peel)", |b| {
        b.iter(|| peel(black_box(&pkt), &secrets[0], |_, _| true).unwrap())
    });
    c.bench_function("unwrap one hop (sphinx-packet process, raw)", |b| {
        b.iter(|| {
            sphinx_packet::SphinxPacket::from_bytes(black_box(&pkt))
                .unwrap()
                .process(&secrets[0])
                .unwrap()
        })
    });
    let mut cache = ReplayCache::new(10_000_000, 1e-6);
    let mut tag = [0u8; 32];
    c.bench_function("replay cache insert (10M capacity)", |b| {
        b.iter(|| {
            rng.fill_bytes(&mut tag);
            cache.check_and_insert(black_box(&tag))
        })
    });
    c.bench_function("replay cache lookup (10M capacity)", |b| {
        b.iter(|| {
            rng.fill_bytes(&mut tag);
            cache.contains(black_box(&tag))
        })
    });
    let f = frame::encode(FrameKind::Sphinx, 7, &pkt).unwrap();
    c.bench_function("frame encode", |b| {
        b.iter(|| frame::encode(FrameKind::Sphinx, 7, black_box(&pkt)).unwrap())
    });
    c.bench_function("frame decode", |b| {
        b.iter(|| frame::decode_body(black_box(&f[2..])).unwrap().epoch)
    });
}

criterion_group!(hot, benches);
criterion_main!(hot);
