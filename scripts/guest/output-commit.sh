# The traffic of tests/qemu_guest.rs (run by scripts/guest/init, eg.* parameters as EG_*):
# phase A, a TCP download and pings through epochgate; then it waits for the test's go (the
# peer's /go), and phase B pings while the test stops the VMM loop.
wget -q -O /tmp/got "http://$EG_peer:8000/bytes/$EG_size"
echo "EG-WGET rc=$? md5=$(md5sum /tmp/got | cut -d' ' -f1) bytes=$(wc -c </tmp/got)"
ping -c "$EG_pings" -i 0.05 -W 30 "$EG_peer" >/tmp/ping 2>&1
echo "EG-PING $(grep 'packets transmitted' /tmp/ping)"
echo "EG-A tx_packets=$(cat /sys/class/net/eth0/statistics/tx_packets)"
n=0
until wget -q -O /dev/null "http://$EG_peer:8000/go" 2>/dev/null; do
    n=$((n + 1))
    [ $n -gt 600 ] && { echo "EG-ERROR no go"; break; }
    sleep 0.2
done
echo "EG-B"
ping -c 200 -i 0.05 -w 12 -q "$EG_peer" >/dev/null 2>&1
