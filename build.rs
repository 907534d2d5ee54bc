//! Bindings to the system's DPDK (22.11): bindgen over `nic/dpdk/wrapper.h`, plus `inline.c`,
//! which gives DPDK's `static inline` fast-path functions linkable symbols.
//!
//! bindgen and cc get the raw `pkg-config --cflags libdpdk` output: it carries
//! `-include rte_config.h -march=...`, which the pkg-config crate would drop.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("libdpdk")
        .output()
        .unwrap_or_else(|e| {
            panic!("pkg-config not runnable ({e}); install pkg-config and libdpdk-dev")
        });
    if !out.status.success() {
        panic!(
            "pkg-config {args:?} libdpdk failed: {}\ninstall DPDK 22.11: apt-get install -y dpdk dpdk-dev libdpdk-dev",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout)
        .expect("pkg-config output is UTF-8")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-changed=nic/dpdk/wrapper.h");
    println!("cargo:rerun-if-changed=nic/dpdk/inline.c");
    println!("cargo:rerun-if-changed=build.rs");

    let cflags = pkg_config(&["--cflags"]);
    let libs = pkg_config(&["--libs"]);

    let mut cc = cc::Build::new();
    cc.file("nic/dpdk/inline.c")
        .include("nic/dpdk")
        .opt_level(3);
    for f in &cflags {
        cc.flag(f);
    }
    cc.flag("-Wno-unused-parameter");
    cc.compile("eg_dpdk_inline");

    for l in &libs {
        if let Some(dir) = l.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = l.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        } else if l.starts_with("-Wl,") {
            println!("cargo:rustc-link-arg={l}");
        }
    }

    let bindings = bindgen::Builder::default()
        .header("nic/dpdk/wrapper.h")
        .clang_args(&cflags)
        .allowlist_function("rte_eal_init|rte_eal_cleanup|rte_eal_remote_launch|rte_eal_wait_lcore|rte_eal_mp_wait_lcore")
        .allowlist_function("rte_get_tsc_hz|rte_lcore_count|rte_get_next_lcore|rte_get_main_lcore|rte_socket_id|rte_strerror")
        .allowlist_function("rte_eth_dev_.*|rte_eth_rx_queue_setup|rte_eth_tx_queue_setup|rte_eth_stats_get|rte_eth_link_get_nowait|rte_eth_macaddr_get|rte_eth_promiscuous_enable|rte_eth_dev_count_avail")
        .allowlist_function("rte_pktmbuf_pool_create|rte_mempool_free")
        .allowlist_function("eg_.*")
        .allowlist_var("RTE_ETH_.*|RTE_MAX_ETHPORTS|RTE_MBUF_DEFAULT_BUF_SIZE|SOCKET_ID_ANY|RTE_ETHER_MAX_LEN")
        .allowlist_type("rte_eth_conf|rte_eth_dev_info|rte_eth_stats|rte_eth_link|rte_ether_addr")
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .generate()
        .expect("bindgen could not generate DPDK bindings (is libclang-dev installed?)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("dpdk_bindings.rs"))
        .expect("write bindings");
}
