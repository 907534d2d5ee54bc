//! Cost per frame of the deferrable-traffic classifier over a realistic egress mix, next to two
//! baselines in the same run (reading the EtherType; `parse` alone) so results read as ratios.
//!
//! Each iteration classifies the whole batch; throughput is in frames, so ns/frame is
//! 1000 / (Melem/s). Run: `cargo bench --bench classify` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use epochgate::classify::{parse_into, Classifier, FrameInfo, RawRule, VmDefer, WindowTable};
use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader, VlanId};

const SRC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
const DST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
const BATCH: usize = 1024;
/// Distinct TCP flows in the mix (the window table sees this many).
const FLOWS: u16 = 256;

fn tcp_v4(flow: u16, window: u16) -> PacketBuilderStep<TcpHeader> {
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4([10, 0, 0, 1], [10, 0, (flow >> 8) as u8, flow as u8], 64)
        .tcp(40000 + flow, 443, 1000, window)
}

fn tcp_v6(flow: u16, window: u16) -> PacketBuilderStep<TcpHeader> {
    let mut dst = [0u8; 16];
    dst[0] = 0x20;
    dst[1] = 0x01;
    dst[14..].copy_from_slice(&flow.to_be_bytes());
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], dst, 64)
        .tcp(40000 + flow, 443, 1000, window)
}

fn write(b: PacketBuilderStep<TcpHeader>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("build frame");
    out
}

fn pad60(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

fn ipv4_fragment(more: bool, offset: u16, len: usize) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(
        len as u16,
        64,
        etherparse::IpNumber::UDP,
        [10, 0, 0, 1],
        [10, 0, 0, 9],
    )
    .expect("header");
    ip.more_fragments = more;
    ip.fragment_offset = etherparse::IpFragOffset::try_new(offset).expect("offset");
    let mut f = Vec::with_capacity(14 + 20 + len);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip.to_bytes());
    f.resize(f.len() + len, 0);
    f
}

/// Roughly what a VM serving bulk TCP sends: mostly ACKs, some data, a little of the rest.
fn mix() -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(BATCH);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..BATCH {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let flow = (rng % u64::from(FLOWS)) as u16;
        // Windows wander, sometimes closing, so the window table has updates to find.
        let window = if rng % 97 == 0 {
            0
        } else {
            20000 + (i as u16 % 40000)
        };
        let frame = match rng % 100 {
            0..=29 => pad60(write(tcp_v4(flow, window).ack(1), &[])), // pure ACK
            30..=39 => write(tcp_v6(flow, window).ack(1), &[]),       // pure ACK, v6
            40..=54 => write(tcp_v4(flow, window).ack(1), &[0x55; 1448]), // data, no PSH
            55..=66 => write(tcp_v4(flow, window).ack(1).psh(), &[0x55; 600]), // PSH data
            67..=74 => write(
                PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
                    .single_vlan(VlanId::try_new(100).expect("vid"))
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                    .tcp(50000 + flow, 80, 1, window)
                    .ack(1),
                &[],
            ), // VLAN pure ACK
            75..=84 => {
                let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 53], 64)
                    .udp(40000 + flow, 53);
                let mut f = Vec::new();
                b.write(&mut f, &[0; 40]).expect("udp");
                f
            } // UDP
            85..=87 => {
                let mut f = Vec::with_capacity(60);
                f.extend_from_slice(&[0xff; 6]);
                f.extend_from_slice(&SRC_MAC);
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                f.resize(60, 0);
                f
            } // ARP
            88..=90 => ipv4_fragment(true, 0, 1480),
            91..=93 => ipv4_fragment(true, 185, 1480),
            94..=95 => ipv4_fragment(false, 370, 40),
            _ => write(tcp_v4(flow, window).syn().ack(1), &[]), // handshakes, FIN-less
        };
        frames.push(frame);
    }
    frames
}

fn rule(f: impl FnOnce(&mut RawRule), verdict: &str) -> RawRule {
    let mut r = RawRule {
        verdict: Some(verdict.into()),
        ..RawRule::default()
    };
    f(&mut r);
    r
}

/// Eight rules of the kinds an operator writes; none matches most of the mix, so every frame
/// pays for all of them (the expensive case), except the ones rule 5 hands to builtin.
fn eight_rules() -> Classifier {
    Classifier::from_raw([
        rule(
            |r| {
                r.vm = Some("db".into());
                r.protocol = Some("tcp".into());
                r.dst_port = Some(5432.into());
            },
            "immediate",
        ),
        rule(
            |r| {
                r.vm = Some("db".into());
                r.protocol = Some("udp".into());
            },
            "builtin",
        ),
        rule(|r| r.dst_ip = Some("192.0.2.0/24".into()), "defer"),
        rule(
            |r| r.src_mac = Some("02:00:00:00:00:99".into()),
            "immediate",
        ),
        rule(|r| r.protocol = Some("icmp".into()), "immediate"),
        rule(
            |r| {
                r.protocol = Some("tcp".into());
                r.src_port = Some("8000-8100".into());
            },
            "defer",
        ),
        rule(|r| r.dst_ip = Some("fd00:1::/32".into()), "immediate"),
        rule(
            |r| {
                r.protocol = Some("udp".into());
                r.dst_port = Some("5000-5100".into());
            },
            "builtin",
        ),
    ])
    .expect("valid rules")
}

fn bench(c: &mut Criterion) {
    let frames = mix();
    let none = Classifier::default();
    let eight = eight_rules();
    let vm = "web";
    let b = VmDefer::Builtin;

    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(frames.len() as u64));

    g.bench_function("baseline_ether_type", |bench| {
        bench.iter(|| {
            let mut acc = 0u32;
            for f in &frames {
                let f = black_box(f.as_slice());
                acc = acc.wrapping_add(u32::from(u16::from_be_bytes([f[12], f[13]])));
            }
            acc
        })
    });
    g.bench_function("baseline_parse", |bench| {
        let mut info = FrameInfo::default();
        bench.iter(|| {
            for f in &frames {
                parse_into(black_box(f), &mut info);
                black_box(&info);
            }
        })
    });
    g.bench_function("no_rules", |bench| {
        bench.iter(|| {
            let mut deferred = 0u32;
            for f in &frames {
                deferred += u32::from(none.classify(vm, b, black_box(f)).is_deferrable());
            }
            deferred
        })
    });
    g.bench_function("8_rules", |bench| {
        bench.iter(|| {
            let mut deferred = 0u32;
            for f in &frames {
                deferred += u32::from(eight.classify(vm, b, black_box(f)).is_deferrable());
            }
            deferred
        })
    });
    let mut table = WindowTable::new(4096, 1024);
    g.bench_function("no_rules_window_table", |bench| {
        bench.iter(|| {
            let mut deferred = 0u32;
            for f in &frames {
                let c = none.classify_with(vm, b, Some(&mut table), black_box(f));
                deferred += u32::from(c.is_deferrable());
            }
            deferred
        })
    });
    let mut table = WindowTable::new(4096, 1024);
    g.bench_function("8_rules_window_table", |bench| {
        bench.iter(|| {
            let mut deferred = 0u32;
            for f in &frames {
                let c = eight.classify_with(vm, b, Some(&mut table), black_box(f));
                deferred += u32::from(c.is_deferrable());
            }
            deferred
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
