# The traffic of scripts/guest-cost.sh (run by scripts/guest/init, eg.* parameters as EG_*):
# a TCP download and upload of EG_size bytes and EG_pings pings, each timed by the guest.
now_us() { adjtimex | awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { printf "%d%06d\n", s, u }'; }
dd if=/dev/zero of=/tmp/up bs=1024 count=$((EG_size / 1024)) 2>/dev/null
# Warm-up: the first connection (and its ARP-free path) outside the measurement.
wget -q -O /dev/null "http://$EG_peer:8000/bytes/1000"
t0=$(now_us)
wget -q -O /dev/null "http://$EG_peer:8000/bytes/$EG_size"
rc=$?
t1=$(now_us)
echo "EG-RESULT download rc=$rc bytes=$EG_size us=$((t1 - t0))"
t0=$(now_us)
wget -q -O /dev/null --post-file /tmp/up "http://$EG_peer:8000/upload"
rc=$?
t1=$(now_us)
echo "EG-RESULT upload rc=$rc bytes=$EG_size us=$((t1 - t0))"
ping -c "$EG_pings" -i 0.1 -W 30 "$EG_peer" >/tmp/ping 2>&1
echo "EG-RESULT ping $(grep -E 'transmitted|round-trip' /tmp/ping | tr '\n' ' ')"
