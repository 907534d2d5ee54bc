//! What `epochgate check-config` prints: [`Config::topology`] and its `describe_*` helpers,
//! with the EAL line shell-quoted.

use super::{
    eal_args, BufferLimits, Config, FramesFrom, HoldFrom, PortSpec, RateLimit, BUDGET_FRAME_BYTES,
    BUDGET_LINE_BPS, BUDGET_WIRE_BYTES, HOLD_BYTES_PER_FRAME, HOLD_DEFAULT_MAX_FRAMES,
};

impl Config {
    /// The resolved topology as human-readable text (what `epochgate check-config` prints).
    pub fn topology(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let eal = eal_args(&self.eal, &self.ports());
        line(format!(
            "EAL:       {}",
            eal.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        line(format!(
            "egress:    {}, pass-through min share {}",
            describe_port(&self.egress),
            if self.passthrough_min_share_ppm == 0 {
                "0% (released frames have strict priority)".to_string()
            } else {
                format!(
                    "{}% (while released frames wait)",
                    f64::from(self.passthrough_min_share_ppm) / 1e4
                )
            }
        ));
        match &self.ingress {
            Some(p) => line(format!("ingress:   {}", describe_port(p))),
            None => line("ingress:   none (every VM has its own port)".to_string()),
        }
        for vm in &self.vms {
            let mut s = format!("vm {:?}: {}, ", vm.name, vm.mode);
            match &vm.port {
                Some(p) => {
                    s.push_str(&format!("port {}", describe_port(p)));
                    match vm.mac {
                        Some(mac) => s.push_str(&format!(", mac {mac}")),
                        None => s.push_str(", mac learned from its first frame"),
                    }
                }
                None => {
                    s.push_str("shared ingress");
                    if let Some(mac) = vm.mac {
                        s.push_str(&format!(", mac {mac}"));
                    }
                }
            }
            if let Some(vlan) = vm.vlan {
                s.push_str(&format!(", vlan {vlan}"));
            }
            if !vm.announce.is_empty() {
                let a: Vec<String> = vm.announce.iter().map(|a| a.to_string()).collect();
                s.push_str(&format!(
                    ", announces {} on promotion ({} time{}, {} ms apart)",
                    a.join(" "),
                    vm.announce_count,
                    if vm.announce_count == 1 { "" } else { "s" },
                    vm.announce_interval_ms
                ));
            }
            line(s);
            line(format!("  buffer:  {}", describe_limits(&vm.limits)));
            line(format!(
                "  budget:  {}",
                describe_budget(&vm.limits, &vm.rate, vm.hold_from)
            ));
            line(format!("  rate:    {}", describe_rate(&vm.rate)));
        }
        let c = &self.control;
        let owner = |spec: &Option<super::IdSpec>, id: Option<u32>, own: &str| match (spec, id) {
            (Some(super::IdSpec::Name(n)), Some(id)) if n.parse::<u32>().is_err() => {
                format!("{n} ({id})")
            }
            (_, Some(id)) => id.to_string(),
            _ => own.to_string(),
        };
        line(format!(
            "sockets:   owner {}, group {}; control socket mode {}, admin socket mode {}{}",
            owner(&c.socket_owner, c.owner_uid, "epochgate's user"),
            owner(&c.socket_group, c.group_gid, "epochgate's group"),
            c.socket_mode,
            c.admin_socket_mode.as_deref().unwrap_or(&c.socket_mode),
            if c.admin_socket_mode.is_none() {
                " (control.socket_mode)"
            } else {
                ""
            }
        ));
        line(format!(
            "control:   socket {} (mode {}), admin socket {}, fence drain <= {} ms, liveness {}, pings every {} ms, Hello within {} ms, at most {} sessions",
            c.socket.display(),
            c.socket_mode,
            c.admin_socket.display(),
            c.fence_drain_ms,
            if c.liveness_timeout_ms == 0 {
                "off".to_string()
            } else {
                format!("{} ms", c.liveness_timeout_ms)
            },
            c.ping_interval_ms(),
            c.hello_timeout_ms,
            c.max_sessions
        ));
        let mut uids = vec!["root".to_string(), "owner".to_string()];
        uids.extend(c.allowed_uids.iter().map(u32::to_string));
        let gids: Vec<String> = c.allowed_gids.iter().map(u32::to_string).collect();
        line(format!(
            "sessions:  uids {}{}",
            uids.join(", "),
            if gids.is_empty() {
                String::new()
            } else {
                format!("; gids {}", gids.join(", "))
            }
        ));
        let a = &self.admin;
        line(format!(
            "admin:     {}",
            if a.writable {
                let mut who = vec!["root".to_string(), "owner".to_string()];
                who.extend(a.write_uids.iter().map(u32::to_string));
                let gids: Vec<String> = a.write_gids.iter().map(u32::to_string).collect();
                format!(
                    "writable (fail VM) by uids {}{}; reads as the sessions",
                    who.join(", "),
                    if gids.is_empty() {
                        String::new()
                    } else {
                        format!("; gids {}", gids.join(", "))
                    }
                )
            } else {
                "read-only (stats, vms; admin.writable = true lets operators fail a VM)".to_string()
            }
        ));
        line(format!(
            "metrics:   {}",
            self.admin.metrics_listen.map_or_else(
                || "epochgate metrics (no HTTP endpoint: [admin] metrics_listen is not set)"
                    .to_string(),
                |a| format!("http://{a}/metrics"),
            )
        ));
        let d = &self.dataplane;
        line(format!(
            "dataplane: {} mbufs (cache {}), rx ring {}, tx ring {}, vm queue {} frames{}, stats every {} ms",
            d.mbufs,
            d.mbuf_cache,
            d.rx_ring,
            d.tx_ring,
            d.vm_queue,
            if d.vm_queue_derived {
                format!(" (the pool's share, at most {HOLD_DEFAULT_MAX_FRAMES})")
            } else {
                String::new()
            },
            d.stats_interval_ms
        ));
        let p = self.pool();
        line(format!(
            "pool:      {} mbufs ({}; {} bytes each {}, {} MB more for EAL): {} for {} port(s)' rings and {} lcores' caches, {} for {} VM(s)' hold budgets, {}",
            p.mbufs,
            if d.mbufs_derived {
                format!("from eal.memory_mb = {}", self.eal.memory_mb)
            } else {
                "dataplane.mbufs".to_string()
            },
            p.mbuf_bytes,
            if self.eal.hugepages {
                "with hugepages"
            } else {
                "without hugepages"
            },
            p.memory_mb_for(0),
            p.rings,
            p.ports,
            p.lcores,
            p.held,
            self.vms.len(),
            if p.held <= p.free() {
                format!("{} spare", p.free() - p.held)
            } else {
                format!("{} more than the pool has (see the warning)", p.held - p.free())
            }
        ));
        let c = &self.classifier;
        let ms = |ns: u64| ns as f64 / 1e6;
        line(format!(
            "classifier: defer {} ms (at most {} ms), min checkpoint interval {} ms, window updates {}, {} rule(s)",
            ms(c.policy.defer_delay_ns),
            ms(c.policy.max_defer_ns),
            ms(c.policy.min_interval_ns),
            if c.window_updates {
                format!(
                    "on (below {} bytes in {} flows)",
                    c.window_update_threshold, c.flow_table
                )
            } else {
                "off".to_string()
            },
            c.rules.len()
        ));
        for w in self.warnings() {
            line(format!("warning:   {w}"));
        }
        out
    }
}

/// "8192 frames / 11.9 MiB = 100.8 ms at 1 Gb/s of 1500-byte frames (no rate limit); frames:
/// the pool's share, bytes: 1518 per frame": what a VM's buffer holds, as time at its rate
/// limit (or, without one, at 1 Gb/s), counted in 1500-byte frames.
fn describe_budget(l: &BufferLimits, r: &RateLimit, from: HoldFrom) -> String {
    let bytes = if l.max_bytes == 0 {
        "no byte limit".to_string()
    } else {
        describe_bytes(l.max_bytes)
    };
    // 1500-byte frames that fit in both limits.
    let frames = if l.max_bytes == 0 {
        l.max_frames
    } else {
        l.max_frames.min(l.max_bytes / BUDGET_FRAME_BYTES)
    };
    let (fps, at) = if r.is_unlimited() {
        (
            BUDGET_LINE_BPS as f64 / (8 * BUDGET_WIRE_BYTES) as f64,
            format!(
                "{} Gb/s of 1500-byte frames (no rate limit)",
                BUDGET_LINE_BPS as f64 / 1e9
            ),
        )
    } else {
        let mut fps = f64::INFINITY;
        let mut limits = Vec::new();
        if r.bytes_per_s != 0 {
            fps = fps.min(r.bytes_per_s as f64 / BUDGET_FRAME_BYTES as f64);
            limits.push(format!("{} Mbit/s", r.bytes_per_s as f64 * 8.0 / 1e6));
        }
        if r.pps != 0 {
            fps = fps.min(r.pps as f64);
            limits.push(format!("{} pps", r.pps));
        }
        (
            fps,
            format!(
                "its rate limit {} (of 1500-byte frames)",
                limits.join(" and ")
            ),
        )
    };
    let s = frames as f64 / fps;
    let time = if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    };
    let frames_from = match from.frames {
        FramesFrom::MaxHeldFrames => "max_held_frames",
        FramesFrom::VmQueue => "dataplane.vm_queue",
        FramesFrom::Pool => "the pool's share",
    };
    let bytes_from = if from.bytes_set {
        "max_held_bytes".to_string()
    } else {
        format!("{HOLD_BYTES_PER_FRAME} per frame")
    };
    let fit = if frames < l.max_frames {
        format!(" (the byte limit holds {frames} 1500-byte frames)")
    } else {
        String::new()
    };
    format!(
        "{} frames / {bytes} = {time}{fit} at {at}; frames: {frames_from}, bytes: {bytes_from}",
        l.max_frames
    )
}

/// "11.9 MiB", "512.0 KiB", "1000 bytes".
fn describe_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / f64::from(1 << 10))
    } else {
        format!("{b} bytes")
    }
}

/// "at most 1024 frames (no byte limit), high water 768 frames, when full: backpressure".
fn describe_limits(l: &BufferLimits) -> String {
    let max = if l.max_bytes == 0 {
        format!("at most {} frames (no byte limit)", l.max_frames)
    } else {
        format!("at most {} frames and {} bytes", l.max_frames, l.max_bytes)
    };
    let high_water = match (l.high_water_frames, l.high_water_bytes) {
        (0, 0) => "off".to_string(),
        (f, 0) => format!("{f} frames"),
        (0, b) => format!("{b} bytes"),
        (f, b) => format!("{f} frames or {b} bytes"),
    };
    format!("{max}, high water {high_water}, when full: {}", l.on_full)
}

/// "100 Mbit/s (burst 12500 bytes), 20000 pps (burst 20 frames)", or "unlimited".
fn describe_rate(r: &RateLimit) -> String {
    if r.is_unlimited() {
        return "unlimited".to_string();
    }
    let bytes = if r.bytes_per_s == 0 {
        "no byte rate limit".to_string()
    } else {
        format!(
            "{} Mbit/s (burst {} bytes)",
            r.bytes_per_s as f64 * 8.0 / 1e6,
            r.burst_bytes
        )
    };
    let frames = if r.pps == 0 {
        "no frame rate limit".to_string()
    } else {
        format!("{} pps (burst {} frames)", r.pps, r.burst_frames)
    };
    format!("{bytes}, {frames}")
}

fn describe_port(p: &PortSpec) -> String {
    match p {
        PortSpec::Vdev { spec, name } if spec != name => format!("{spec} (vdev {name})"),
        PortSpec::Vdev { spec, .. } => format!("{spec} (vdev)"),
        PortSpec::Pci { addr } => format!("{addr} (PCI)"),
    }
}

// Only for display, so the printed EAL line can be pasted into a shell.
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:=/@+%".contains(&b));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}
