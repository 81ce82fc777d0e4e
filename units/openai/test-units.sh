#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Checks resident-openai's units with systemd's own tools, without a
# running systemd: verify must be silent, the offline exposure score must
# stay <= 2.0, the network settings must keep the gateway on loopback, and
# the checks must be able to fail (a broken copy is caught).
# Usage: test-units.sh SOURCE_DIR BUILT_SERVICE
set -u
src=$1
service=$2
fail() { echo "FAIL: $*"; exit 1; }
command -v systemd-analyze >/dev/null 2>&1 || { echo "SKIP: systemd-analyze not installed (Debian package systemd)"; exit 77; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
mkdir -p "$tmp/u" "$tmp/bad" "$tmp/home"

exe=${RESIDENT_BUILD_ROOT:-/nonexistent}/client/openai/resident-openai
[ -x "$exe" ] || exe=/bin/true
cp "$src/resident-openai.socket" "$tmp/u/"
sed "s|^ExecStart=[^ ]*|ExecStart=$exe|" "$service" > "$tmp/u/resident-openai.service"
grep -q '@[A-Z]*@' "$tmp/u/resident-openai.service" && fail "unsubstituted @VAR@"

verify() {
    out=$(cd "$1" && HOME="$tmp/home" systemd-analyze verify ./resident-openai.socket ./resident-openai.service 2>&1)
    rc=$?
    # residentd.socket is named in After=/Wants= but is not part of this check.
    out=$(printf '%s\n' "$out" | grep -v 'residentd.socket' | sed '/^$/d')
    [ $rc -eq 0 ] && [ -z "$out" ] && return 0
    echo "$out"
    return 1
}
verify "$tmp/u" || fail "systemd-analyze verify"
echo "verify: resident-openai.socket + resident-openai.service clean"

sec=$(cd "$tmp/u" && systemd-analyze security --offline=true ./resident-openai.service 2>&1)
score=$(echo "$sec" | sed -n 's/.*Overall exposure level for resident-openai.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || { echo "$sec"; fail "no exposure score"; }
echo "systemd-analyze security --offline=true: exposure $score (gate 2.0)"
echo "$sec" | grep '^✗' | sed 's/  */ /g'
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score > 2.0"

# Loopback only, in the unit and in the socket.
u="$tmp/u/resident-openai.service"
grep -qx 'IPAddressDeny=any' "$u" || fail "IPAddressDeny=any missing"
grep -qx 'IPAddressAllow=localhost' "$u" || fail "IPAddressAllow=localhost missing"
grep -qx 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' "$u" || fail "RestrictAddressFamilies differs"
grep '^ListenStream=' "$src/resident-openai.socket" | grep -v -e '=127\.' -e '=\[::1\]' -e '=/' &&
    fail "a non-loopback TCP listener in resident-openai.socket"

# Self-check: the gates can fail.
cp "$tmp/u/resident-openai.socket" "$tmp/bad/"
sed 's/^ProtectSystem=strict/ProtectSystem=bogus/; s/^NoNewPrivileges=yes/NoNewPrivilege=yes/' "$u" \
    > "$tmp/bad/resident-openai.service"
verify "$tmp/bad" >/dev/null && fail "verify missed an invalid value and an unknown key"
sed -e '/^CapabilityBoundingSet=/d' -e '/^SystemCallFilter=/d' -e '/^DynamicUser=/d' -e '/^IPAddress/d' \
    -e '/^RestrictAddressFamilies=/d' "$u" > "$tmp/bad/resident-openai.service"
(cd "$tmp/bad" && systemd-analyze security --offline=true --threshold=20 ./resident-openai.service >/dev/null 2>&1) &&
    fail "the security gate passed a stripped unit"
echo "self-check: broken units are caught"
echo "ok"
