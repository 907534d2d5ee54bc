//! A VMM's way in: epochgate serves vhost-user sockets, and a second process attaches with
//! virtio-user (as QEMU's vhost-user netdev would). Its frames reach egress; frames sent to its
//! MAC on the uplink reach it.

mod common;
use common::*;
use epochgate::frame::MacAddr;
use epochgate::gen::{self, Stream};
use serde_json::Value;
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

fn peer_result(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"done\""))
        .unwrap_or_else(|| {
            panic!(
                "peer printed no result\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("peer JSON")
}

#[test]
fn a_virtio_user_vm_sends_to_egress_and_receives_from_the_uplink() {
    let _g = serial();
    let dir = tempdir();
    let d = dir.path();
    let vm_out: Vec<_> = (0..2000)
        .map(|q| {
            gen::frame(
                &Stream {
                    id: 1,
                    src: VM,
                    dst: GW,
                    vlan: None,
                },
                q,
            )
        })
        .collect();
    let to_vm: Vec<_> = (0..300)
        .map(|q| {
            gen::frame(
                &Stream {
                    id: 9,
                    src: GW,
                    dst: VM,
                    vlan: None,
                },
                q,
            )
        })
        .collect();
    write_pcap(&d.join("vm-out.pcap"), &vm_out);
    write_pcap(&d.join("to-vm.pcap"), &to_vm);

    let mut eg = Running::start(d, &config(d, "eg-vhost"));
    eg.wait_for_path(&d.join("vm1.sock"));
    eg.wait_for_path(&d.join("uplink.sock"));
    let p = |n: &str| d.join(n).display().to_string();
    let out = run_peer(&[
        "--file-prefix".into(),
        format!("eg-vhost-peer-{}", std::process::id()),
        "--port".into(),
        format!("net_virtio_user0,path={}", p("vm1.sock")),
        "--port".into(),
        format!("net_virtio_user1,path={}", p("uplink.sock")),
        "--send".into(),
        format!("0={}", p("vm-out.pcap")),
        "--recv".into(),
        format!("0={}", p("vm-in.pcap")),
        "--expect".into(),
        format!("0={}", to_vm.len()),
        "--send".into(),
        format!("1={}", p("to-vm.pcap")),
        "--recv".into(),
        format!("1={}", p("egress.pcap")),
        "--expect".into(),
        format!("1={}", vm_out.len()),
    ]);
    let result = peer_result(&out);
    let stats = eg.stop();
    assert_eq!(
        result["ok"],
        true,
        "peer: {result}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

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
    let vm_out: Vec<_> = (0..900)
        .map(|q| {
            gen::frame(
                &Stream {
                    id: 1,
                    src: VM,
                    dst: GW,
                    vlan: None,
                },
                q,
            )
        })
        .collect();
    write_pcap(&d.join("vm-out.pcap"), &vm_out);
    let mut eg = Running::start(d, &config(d, "eg-late"));
    eg.wait_for_path(&d.join("vm1.sock"));
    let p = |n: &str| d.join(n).display().to_string();
    let sender = run_peer(&[
        "--file-prefix".into(),
        format!("eg-late-vm-{}", std::process::id()),
        "--port".into(),
        format!("net_virtio_user0,path={}", p("vm1.sock")),
        "--send".into(),
        format!("0={}", p("vm-out.pcap")),
    ]);
    assert_eq!(peer_result(&sender)["ok"], true);
    let waiting = eg.wait_for("the VM's frames inside epochgate", |s| {
        u(vm(s, "vm1"), "rx_frames") == 900
    });
    assert_eq!(
        u(vm(&waiting, "vm1"), "tx_frames"),
        0,
        "nothing can have left without an uplink"
    );

    let receiver = run_peer(&[
        "--file-prefix".into(),
        format!("eg-late-up-{}", std::process::id()),
        "--port".into(),
        format!("net_virtio_user0,path={}", p("uplink.sock")),
        "--recv".into(),
        format!("0={}", p("egress.pcap")),
        "--expect".into(),
        "0=900".into(),
    ]);
    let result = peer_result(&receiver);
    let stats = eg.stop();
    assert_eq!(result["ok"], true, "{result}");
    assert_interleaving(&read_pcap(&d.join("egress.pcap")), &[&vm_out]);
    let v = vm(&stats, "vm1");
    assert!(
        v["dropped"].as_object().is_none_or(|m| m.is_empty()),
        "nothing may be dropped: {v}"
    );
    assert_balanced(&stats);
}
