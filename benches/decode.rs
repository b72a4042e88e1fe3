//! Decoding throughput: a 16-cell Daly poll's worth of replies, the Daly deframer on noisy input arriving in
//! BLE-sized pieces, and a 4-pack × 16-cell Pace all-packs analog reply. Run: `cargo bench --bench decode`.

use std::hint::black_box;

use bms_exporter::protocol::DecodeOptions;
use bms_exporter::protocol::daly::{self, A5Framing, Frame};
use bms_exporter::protocol::deframer::{Deframer, Event};
use bms_exporter::protocol::pace::{self, Header, PackBlock};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The reply frames of one full A5 poll of a 16-cell, 4-probe board asked with host address 0x40:
/// 0x90–0x94, six 0x95 frames, one 0x96, 0x97 and 0x98 — 14 frames.
fn daly_poll() -> Vec<u8> {
    let frame = |command: u8, data: [u8; 8]| Frame { address: 1, command, data }.encode();
    let mut frames = vec![
        frame(0x90, [0x02, 0x10, 0, 0, 0x75, 0x6F, 0x03, 0xBC]),
        frame(0x91, [0x0C, 0xFE, 2, 0x0C, 0xF0, 7, 0, 0]),
        frame(0x92, [0x3C, 1, 0x3A, 3, 0, 0, 0, 0]),
        frame(0x93, [1, 1, 1, 0x71, 0, 4, 0x86, 0xC0]),
        frame(0x94, [16, 4, 1, 0, 0x02, 0, 42, 0]),
    ];
    for k in 1..=6u8 {
        let mv = 3300 + u16::from(k);
        let [hi, lo] = mv.to_be_bytes();
        frames.push(frame(0x95, [k, hi, lo, hi, lo, hi, lo, 0]));
    }
    frames.push(frame(0x96, [1, 61, 62, 60, 63, 0, 0, 0]));
    frames.push(frame(0x97, [0x81, 0, 0, 0, 0, 0, 0, 0]));
    frames.push(frame(0x98, [0; 8]));
    frames.concat()
}

/// The poll stream with noise: garbage between frames and every fourth frame cut short, as a bad line gives.
fn noisy_stream(copies: usize) -> Vec<u8> {
    let clean = daly_poll();
    let mut out = Vec::with_capacity(clean.len() * copies * 2);
    for (i, frame) in clean.chunks(13).cycle().take(14 * copies).enumerate() {
        out.extend_from_slice(&[0x00, 0x13, 0x37][..i % 4]);
        if i % 4 == 3 {
            out.extend_from_slice(&frame[..9]);
        }
        out.extend_from_slice(frame);
    }
    out
}

fn pace_four_packs() -> Vec<u8> {
    let block = |n: u16| PackBlock {
        cells_mv: (0..16).map(|c| 3300 + c + n).collect(),
        temps_raw: vec![2980, 2985, 2990, 2975, 3010, 2960],
        current_raw: -1084,
        voltage_mv: 52_900,
        remaining_raw: 11_430,
        user_defined_count: 9,
        tail: pace::pace_tail(31_764, 42, 29_000, 20),
    };
    let blocks: Vec<PackBlock> = (1..=4).map(block).collect();
    let header = Header { ver: 0x25, adr: 1, cid1: 0x46, code: 0 };
    pace::encode_analog(header, 0, 4, &blocks).unwrap()
}

fn bench(c: &mut Criterion) {
    let options = DecodeOptions::default();

    let poll = daly_poll();
    let mut group = c.benchmark_group("daly");
    group.throughput(Throughput::Elements(14));
    group.bench_function("poll_16_cells_14_frames", |b| {
        b.iter(|| daly::decode_capture(None, black_box(&poll), &options).unwrap());
    });
    let noisy = noisy_stream(64);
    group.throughput(Throughput::Bytes(noisy.len() as u64));
    group.bench_function("deframer_noisy_20_byte_chunks", |b| {
        b.iter(|| {
            let mut deframer = Deframer::new(A5Framing);
            let mut frames = 0usize;
            for piece in black_box(&noisy).chunks(20) {
                deframer.push(piece);
                while let Some(event) = deframer.poll() {
                    frames += usize::from(matches!(event, Event::Frame(_)));
                }
            }
            assert_eq!(frames, 14 * 64);
            frames
        });
    });
    group.finish();

    let reply = pace_four_packs();
    let mut group = c.benchmark_group("pace");
    group.throughput(Throughput::Bytes(reply.len() as u64));
    group.bench_function("analog_4_packs_16_cells", |b| {
        b.iter(|| {
            let capture = pace::decode_capture(None, black_box(&reply), &options).unwrap();
            assert_eq!(capture.device.packs.len(), 4);
            capture
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
