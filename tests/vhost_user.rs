//! A VMM's way in: epochgate serves vhost-user sockets, and a second process attaches with
//! virtio-user (as QEMU's vhost-user netdev would). Its frames reach egress; frames sent to its
//! MAC on the uplink reach it.

mod common;
use common::*;
use epochgate::tools::gen::{self, Stream};
use epochgate::wire::frame::MacAddr;
use std::path::Path;

const VM: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x01]);
const GW: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

fn config(d: &Path, prefix: &str) -> String {
    format!(
        "{}[egress]\nport = \"net_vhost1,iface={d}/uplink.sock\"\n\n\
         [[vm]]\nname = \"vm1\"\nport = \"net_vhost0,iface={d}/vm1.sock\"\nmac = \"{VM}\"\n",
        eal_and_control(d, prefix),
        d = d.display()
    )
}

fn traffic(id: u32, src: MacAddr, dst: MacAddr, n: u32) -> Vec<Vec<u8>> {
    gen::frames(
        &Stream {
            id,
            src,
            dst,
            vlan: None,
        },
        n,
    )
}

#[test]
fn a_virtio_user_vm_sends_to_egress_and_receives_from_the_uplink() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let vm_out = traffic(1, VM, GW, 2000);
    let to_vm = traffic(9, GW, VM, 300);
    write_pcap(&d.join("vm-out.pcap"), &vm_out);
    write_pcap(&d.join("to-vm.pcap"), &to_vm);

    let mut eg = Running::start(d, &config(d, "eg-vhost"));
    eg.wait_for_path(&d.join("vm1.sock"));
    eg.wait_for_path(&d.join("uplink.sock"));
    run_peer(
        "eg-vhost-peer",
        &[
            PeerPort {
                vdev: virtio_user(0, &d.join("vm1.sock")),
                send: Some(d.join("vm-out.pcap")),
                recv: Some(d.join("vm-in.pcap")),
                expect: Some(to_vm.len()),
            },
            PeerPort {
                vdev: virtio_user(1, &d.join("uplink.sock")),
                send: Some(d.join("to-vm.pcap")),
                recv: Some(d.join("egress.pcap")),
                expect: Some(vm_out.len()),
            },
        ],
    );
    let stats = eg.stop();

    assert_interleaving(&read_pcap(&d.join("egress.pcap")), &[&vm_out]);
    assert_eq!(
        read_pcap(&d.join("vm-in.pcap")),
        to_vm,
        "the VM did not get exactly its inbound frames"
    );
    let v = vm(&stats, "vm1");
    assert_eq!(u(v, "tx_frames"), vm_out.len() as u64, "{v}");
    assert_eq!(u(v, "inbound_frames"), to_vm.len() as u64, "{v}");
    assert_balanced(&stats);
}

#[test]
fn frames_wait_for_an_uplink_that_is_not_there_yet() {
    // The VM sends while nothing drains the egress port: epochgate keeps what TX did not take
    // (and pushes back on the VM) instead of dropping; once the uplink attaches, all of it leaves.
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let vm_out = traffic(1, VM, GW, 900);
    write_pcap(&d.join("vm-out.pcap"), &vm_out);
    let mut eg = Running::start(d, &config(d, "eg-late"));
    eg.wait_for_path(&d.join("vm1.sock"));
    run_peer(
        "eg-late-vm",
        &[PeerPort {
            vdev: virtio_user(0, &d.join("vm1.sock")),
            send: Some(d.join("vm-out.pcap")),
            ..Default::default()
        }],
    );
    let waiting = eg.wait_for("the VM's frames inside epochgate", |s| {
        u(vm(s, "vm1"), "rx_frames") == 900
    });
    assert_eq!(
        u(vm(&waiting, "vm1"), "tx_frames"),
        0,
        "nothing can have left without an uplink"
    );

    run_peer(
        "eg-late-up",
        &[PeerPort {
            vdev: virtio_user(0, &d.join("uplink.sock")),
            recv: Some(d.join("egress.pcap")),
            expect: Some(900),
            ..Default::default()
        }],
    );
    let stats = eg.stop();
    assert_interleaving(&read_pcap(&d.join("egress.pcap")), &[&vm_out]);
    let v = vm(&stats, "vm1");
    assert!(
        v["dropped"].as_object().is_none_or(|m| m.is_empty()),
        "nothing may be dropped: {v}"
    );
    assert_balanced(&stats);
}

#[test]
fn epochgate_comes_back_after_being_killed() {
    // SIGKILL leaves the vhost-user socket files behind; a restart must serve them again, and
    // a second epochgate must not steal the sockets of a live one.
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let mut first = Running::start(d, &config(d, "eg-crash1"));
    first.wait_for("first instance running", |_| true);
    let pid = first.child.id();
    signal(pid, "KILL");
    let _ = first.child.wait();
    assert!(
        d.join("vm1.sock").exists(),
        "the killed process left its socket file"
    );

    let live_dir = tempdir();
    let mut second = Running::start(live_dir.path(), &config(d, "eg-crash2"));
    second.wait_for("restarted instance running", |_| true);
    let vm_out = traffic(1, VM, GW, 100);
    write_pcap(&d.join("vm-out.pcap"), &vm_out);
    run_peer(
        "eg-crash-peer",
        &[
            PeerPort {
                vdev: virtio_user(0, &d.join("vm1.sock")),
                send: Some(d.join("vm-out.pcap")),
                ..Default::default()
            },
            PeerPort {
                vdev: virtio_user(1, &d.join("uplink.sock")),
                recv: Some(d.join("egress.pcap")),
                expect: Some(100),
                ..Default::default()
            },
        ],
    );
    assert_interleaving(&read_pcap(&d.join("egress.pcap")), &[&vm_out]);

    // A third instance on the same sockets is refused, naming the socket, and the live one is untouched.
    let third_dir = tempdir();
    let err = run_refused(
        &third_dir.path().join("c.toml"),
        &config(d, "eg-crash3"),
        &[],
    );
    assert!(
        err.contains("uplink.sock") && err.contains("another process"),
        "{err}"
    );
    let stats = second.stop();
    assert_eq!(u(vm(&stats, "vm1"), "tx_frames"), 100);
}

/// With the uplink's peer absent, TX takes nothing: a burst of frames sits staged for TX and the
/// rest waits ready. Every reading of the counters, over the admin socket and in the stats
/// file, accounts for every frame: received = held + ready + staged + transmitted + dropped.
#[test]
fn counters_balance_while_egress_tx_is_stalled() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let vm_out = traffic(1, VM, GW, 100);
    write_pcap(&d.join("vm-out.pcap"), &vm_out);
    // The VM sends from a pcap port; the egress is a vhost-user port nobody attaches to.
    let cfg = format!(
        "{}[egress]\nport = \"net_vhost1,iface={d}/uplink.sock\"\n\n\
         [[vm]]\nname = \"vm1\"\nport = \"net_pcap0,rx_pcap={d}/vm-out.pcap,tx_pcap={d}/vm-in.pcap\"\nmac = \"{VM}\"\n",
        eal_and_control(d, "eg-stalled"),
        d = d.display()
    );
    let mut eg = Running::start(d, &cfg);
    eg.wait_for_path(&d.join("admin.sock"));
    let balanced = |v: &epochgate::stats::VmSnapshot| {
        let dropped: u64 = v.dropped.values().sum();
        v.rx_frames == v.held_frames + v.ready_frames + v.staged_frames + v.tx_frames + dropped
    };
    // Read as fast as the admin socket answers while the VM's capture is read and after.
    let mut reads = 0;
    let last = loop {
        let s = epochgate::admin::query(&d.join("admin.sock"), "stats").expect("admin stats");
        let v = s.vms[0].clone();
        assert!(balanced(&v), "read {reads}: counters do not add up: {v:?}");
        assert!(v.balanced(), "{v:?}");
        reads += 1;
        if v.rx_frames == 100 && reads >= 50 {
            break v;
        }
        assert!(reads < 100_000, "the capture was never read: {v:?}");
    };
    assert_eq!(last.tx_frames, 0, "nobody is attached to the uplink");
    assert_eq!(last.held_frames, 0, "a pass-through VM holds nothing");
    assert_eq!(last.staged_frames, 32, "one TX burst is staged: {last:?}");
    assert_eq!(last.ready_frames, 68, "{last:?}");
    let file = eg.wait_for("the stats file shows all 100", |s| {
        u(vm(s, "vm1"), "rx_frames") == 100
    });
    assert_eq!(u(vm(&file, "vm1"), "staged_frames"), 32, "{file}");
    let stats = eg.stop();
    assert_balanced(&stats);
    // At exit, what TX never took is dropped and counted.
    assert_eq!(dropped(vm(&stats, "vm1"), "shutdown"), 100, "{stats}");
}
