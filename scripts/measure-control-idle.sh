#!/usr/bin/env bash
# The control thread's CPU while epochgate is idle: ticks of utime+stime of the "eg-control"
# thread over 10 s, one protected VM on pcap ports, nothing sent.
# Usage: scripts/measure-control-idle.sh [path/to/epochgate]   (default: target/release/epochgate)
set -euo pipefail
bin=${1:-target/release/epochgate}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
python3 -c "import struct,sys; open(sys.argv[1],'wb').write(struct.pack('<IHHiIII',0xa1b2c3d4,2,4,0,0,65535,1))" "$d/a.pcap"
cp "$d/a.pcap" "$d/b.pcap"
cat > "$d/c.toml" <<EOT
[eal]
lcores = "0-1"
hugepages = false
file_prefix = "eg-idle-$$"
[control]
socket = "$d/control.sock"
[egress]
port = "net_pcap0,rx_pcap=$d/a.pcap,tx_pcap=$d/out.pcap"
[[vm]]
name = "vm"
port = "net_pcap1,rx_pcap=$d/b.pcap,tx_pcap=$d/in.pcap"
mode = "protected"
EOT
"$bin" run --quiet --duration 13 --config "$d/c.toml" >"$d/log" 2>&1 &
pid=$!
sleep 2
task=$(dirname "$(grep -l eg-control /proc/$pid/task/*/comm | head -1)")
a=$(awk '{print $14 + $15}' "$task/stat")
sleep 10
b=$(awk '{print $14 + $15}' "$task/stat")
hz=$(getconf CLK_TCK)
echo "eg-control: $((b - a)) ticks of 1/$hz s in 10 s ($(awk "BEGIN {printf \"%.1f\", ($b - $a) * 100 / ($hz * 10)}")% of one core)"
wait $pid
