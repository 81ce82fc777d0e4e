#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Checks the shipped units and snippets with systemd's own tools, without a
# running systemd (CI has none as PID 1):
#   1. systemd-analyze verify: system pair, user pair; any diagnostic fails
#      (verify exits 0 on unknown keys, so its output is the signal);
#   2. systemd-analyze security --offline=true: exposure <= 2.0 (0-10 scale;
#      --threshold= takes the 0-100 scale, so 2.0 is --threshold=20);
#   3. a self-check that 1 and 2 can fail (a broken copy must be caught);
#   4. systemd-sysusers / systemd-tmpfiles --root=TMP create the users and
#      directories with the intended owners and modes;
#   5. the example residentd.conf is "key = value" lines only.
# Usage: test-units.sh SOURCE_UNITS_DIR BUILD_UNITS_DIR
set -u
src=$1
build=$2
fail() { echo "FAIL: $*"; exit 1; }

command -v systemd-analyze >/dev/null 2>&1 || { echo "SKIP: systemd-analyze not installed (Debian package systemd)"; exit 77; }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
mkdir -p "$tmp/system" "$tmp/user" "$tmp/xdg" "$tmp/root/etc" "$tmp/home"
chmod 0700 "$tmp/xdg"

# verify checks that ExecStart= is executable: use residentd if it is built,
# else a stand-in (the check is about the unit, not the binary).
exe=${RESIDENT_BUILD_ROOT:-/nonexistent}/daemon/residentd
[ -x "$exe" ] || exe=/bin/true
echo "ExecStart for verification: $exe"
cp "$src/residentd.socket" "$tmp/system/"
sed "s|^ExecStart=.*|ExecStart=$exe|" "$build/residentd.service" > "$tmp/system/residentd.service"
cp "$src/user/residentd.socket" "$tmp/user/"
sed "s|^ExecStart=.*|ExecStart=$exe|" "$build/user/residentd.service" > "$tmp/user/residentd.service"
grep -q '@[A-Z]*@' "$tmp/system/residentd.service" "$tmp/user/residentd.service" && fail "unsubstituted @VAR@ in a unit"

# verify DIR [--user]: exit status and silence.
verify() {
    dir=$1; shift
    # A private HOME/XDG tree: the runner's own ~/.config/systemd/user must
    # neither leak into the --user check nor be required to be readable.
    out=$(cd "$dir" && HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/home/.config" XDG_DATA_HOME="$tmp/home/.local/share" \
          XDG_RUNTIME_DIR="$tmp/xdg" systemd-analyze "$@" verify ./residentd.socket ./residentd.service 2>&1)
    rc=$?
    [ $rc -eq 0 ] && [ -z "$out" ] && return 0
    echo "$out"
    return 1
}
verify "$tmp/system" || fail "systemd-analyze verify: system units"
echo "verify: system residentd.socket + residentd.service clean"
verify "$tmp/user" --user || fail "systemd-analyze --user verify: user units"
echo "verify: user residentd.socket + residentd.service clean"

# security: parse the score and gate on the 0-100 threshold.
sec=$(cd "$tmp/system" && systemd-analyze security --offline=true ./residentd.service 2>&1)
score=$(echo "$sec" | sed -n 's/.*Overall exposure level for residentd.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || { echo "$sec"; fail "no exposure score in systemd-analyze security output"; }
echo "systemd-analyze security --offline=true: exposure $score (0-10 scale; gate 2.0)"
echo "$sec" | grep '^✗' | sed 's/  */ /g'
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score > 2.0"
(cd "$tmp/system" && systemd-analyze security --offline=true --threshold=20 ./residentd.service >/dev/null 2>&1) ||
    fail "--threshold=20 (= 2.0) rejected the unit"
usec=$(cd "$tmp/user" && HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/home/.config" XDG_DATA_HOME="$tmp/home/.local/share" \
       XDG_RUNTIME_DIR="$tmp/xdg" systemd-analyze --user security --offline=true ./residentd.service 2>&1 |
       sed -n 's/.*Overall exposure level for residentd.service: \(.*\)/\1/p')
echo "user unit exposure (informational, unprivileged manager): ${usec:-n/a}"

# self-check: the gates above must be able to fail.
cp "$tmp/system/residentd.socket" "$tmp/root/"
sed 's/^ProtectSystem=strict/ProtectSystem=bogus/; s/^NoNewPrivileges=yes/NoNewPrivilege=yes/' \
    "$tmp/system/residentd.service" > "$tmp/root/residentd.service"
verify "$tmp/root" >/dev/null && fail "verify did not notice an invalid value and an unknown key"
sed -e '/^CapabilityBoundingSet=/d' -e '/^PrivateNetwork=/d' -e '/^SystemCallFilter=/d' -e '/^User=/d' \
    "$tmp/system/residentd.service" > "$tmp/root/residentd.service"
(cd "$tmp/root" && systemd-analyze security --offline=true --threshold=20 ./residentd.service >/dev/null 2>&1) &&
    fail "the security gate passed a unit without User=, capability bounds, seccomp and network isolation"
rm -f "$tmp/root/residentd.service" "$tmp/root/residentd.socket"
echo "self-check: broken units are caught"

# sysusers.d + tmpfiles.d into an empty root.
if [ "$(id -u)" -ne 0 ]; then
    echo "note: not root, sysusers.d/tmpfiles.d not applied (chown needs root; CI runs as root)"
elif command -v systemd-sysusers >/dev/null 2>&1 && command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-sysusers --root="$tmp/root" "$src/sysusers.d/resident.conf" >/dev/null 2>&1 || fail "systemd-sysusers"
    grep -q '^residentd:x:[0-9]*:[0-9]*:resident inference daemon:/:/usr/sbin/nologin$' "$tmp/root/etc/passwd" ||
        fail "sysusers: no residentd user: $(cat "$tmp/root/etc/passwd")"
    grep -q '^resident:x:' "$tmp/root/etc/group" || fail "sysusers: no resident group"
    grep -q '^render:x:' "$tmp/root/etc/group" || fail "sysusers: no render group"
    dgid=$(sed -n 's/^residentd:x:\([0-9]*\):.*/\1/p' "$tmp/root/etc/group")
    systemd-tmpfiles --root="$tmp/root" --create "$src/tmpfiles.d/resident.conf" >/dev/null 2>&1 || fail "systemd-tmpfiles"
    got=$(stat -c '%a %u %g' "$tmp/root/var/lib/resident/model")
    [ "$got" = "750 0 $dgid" ] || fail "model dir is '$got', expected '750 0 $dgid'"
    echo "sysusers/tmpfiles: residentd (gid $dgid), groups resident and render, /var/lib/resident/model 0750 root:residentd"
else
    echo "note: systemd-sysusers/systemd-tmpfiles absent, snippets not applied"
fi

# the example configuration: comments, blank lines and "key = value" only.
bad=$(grep -vE '^[[:space:]]*(#.*)?$' "$src/residentd.conf" | grep -vE '^[a-z_]+ = [^[:space:]].*$')
[ -z "$bad" ] || fail "residentd.conf lines not in 'key = value' form: $bad"
echo "residentd.conf: $(grep -cE '^[a-z_]+ = ' "$src/residentd.conf") keys"
# ... and residentd itself accepts it, when it is built (unknown keys are fatal).
if [ -x "${RESIDENT_BUILD_ROOT:-/nonexistent}/daemon/residentd" ]; then
    keys=$("$RESIDENT_BUILD_ROOT/daemon/residentd" --help 2>&1 | sed -n '/configuration keys:/,$p' | sed 's/configuration keys://')
    for k in $(sed -n 's/^\([a-z_]*\) = .*/\1/p' "$src/residentd.conf"); do
        echo " $keys " | tr '\n' ' ' | grep -q " $k " || fail "residentd.conf key '$k' is not in residentd --help"
    done
    echo "residentd.conf: every key is one residentd --help lists"
fi
echo "units: ok"
exit 0
